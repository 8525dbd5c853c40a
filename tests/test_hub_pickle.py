"""Pickle-only repos on the local Hub: refused without the opt-in, loaded safely and merged with it.

With ``allow_pickle`` a ``.bin`` is read by ``torch.load(weights_only=True)`` (tensors only) and
converted once to safetensors in the download cache; a pickle that would run code is refused and
its code never runs.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hub_merge.cli import main
from hub_merge.errors import UnsafeWeightsError
from hub_merge.hub import get_api, pull
from hub_merge.hub.convert import PickleWeightsWarning
from hub_merge.merge import MergeRecipe, ModelEntry, merge_to_folder


def _as_pickle(src: Path, dst: Path, weights: str, pickled: str) -> Path:
    """A copy of ``src`` whose ``weights`` safetensors file is a ``torch.save`` pickle instead."""
    shutil.copytree(src, dst)
    torch.save(load_file(dst / weights), dst / pickled)
    (dst / weights).unlink()
    return dst


def _upload(local_hub, folder: Path, name: str) -> str:
    api = get_api(local_hub.endpoint, local_hub.token)
    repo_id = f"{local_hub.user}/{name}"
    api.create_repo(repo_id)
    api.upload_folder(repo_id=repo_id, folder_path=folder)
    return repo_id


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


@pytest.fixture
def pickle_repo(local_hub, hubio_models, tmp_path) -> str:
    folder = _as_pickle(
        hubio_models.expert, tmp_path / "pickled", "model.safetensors", "pytorch_model.bin"
    )
    return _upload(local_hub, folder, "pickled")


def test_pickle_only_repo_is_refused_before_download_without_the_flag(
    local_hub, pickle_repo, tmp_path
):
    cache = tmp_path / "cache"
    with pytest.raises(UnsafeWeightsError, match="--allow-pickle"):
        pull(pickle_repo, endpoint=local_hub.endpoint, token=local_hub.token, cache_dir=cache)
    assert not _files(cache) & {"pytorch_model.bin", "model.safetensors", "config.json"}


def test_pickle_only_repo_loads_converts_once_and_merges_with_the_flag(
    local_hub, pickle_repo, hubio_models, tmp_path
):
    from transformers import AutoModelForCausalLM

    cache = tmp_path / "cache"
    kw = {"endpoint": local_hub.endpoint, "token": local_hub.token, "cache_dir": cache}
    with pytest.warns(PickleWeightsWarning, match=r"weights_only=True"):
        model = pull(pickle_repo, allow_pickle=True, **kw)
    assert model.pickle and model.kind == "full" and len(model.revision) == 40
    assert (model.path / "model.safetensors").is_file() and "config.json" in model.files
    assert model.path.is_relative_to(cache)
    original = load_file(hubio_models.expert / "model.safetensors")
    converted = load_file(model.path / "model.safetensors")
    assert set(converted) == set(original)
    for name, tensor in original.items():
        assert torch.equal(converted[name], tensor), name
    AutoModelForCausalLM.from_pretrained(model.path)  # transformers reads the converted folder

    # converted once: a second pull reuses the folder, and still says where the weights came from
    stamp = (model.path / "model.safetensors").stat().st_mtime_ns
    with pytest.warns(PickleWeightsWarning):
        again = pull(pickle_repo, allow_pickle=True, **kw)
    assert again.path == model.path
    assert (again.path / "model.safetensors").stat().st_mtime_ns == stamp

    # and it merges like the safetensors original does
    def recipe(expert: Path) -> MergeRecipe:
        return MergeRecipe(
            method="linear",
            models=[
                ModelEntry(model=str(hubio_models.base), parameters={"weight": 0.5}),
                ModelEntry(model=str(expert), parameters={"weight": 0.5}),
            ],
        )

    ours = merge_to_folder(recipe(model.path), tmp_path / "m1", device="cpu", progress=False)
    want = merge_to_folder(
        recipe(hubio_models.expert), tmp_path / "m2", device="cpu", progress=False
    )
    a, b = load_file(ours / "model.safetensors"), load_file(want / "model.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in b)


def test_pickle_only_adapter_loads_with_the_flag(local_hub, hubio_models, tmp_path):
    folder = _as_pickle(
        hubio_models.adapter, tmp_path / "lora", "adapter_model.safetensors", "adapter_model.bin"
    )
    repo_id = _upload(local_hub, folder, "pickled-lora")
    kw = {"endpoint": local_hub.endpoint, "token": local_hub.token, "cache_dir": tmp_path / "c"}
    with pytest.raises(UnsafeWeightsError):
        pull(repo_id, **kw)
    with pytest.warns(PickleWeightsWarning):
        model = pull(repo_id, allow_pickle=True, **kw)
    assert model.kind == "adapter" and model.adapter.rank == 4
    assert sorted(p.name for p in model.path.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    original = load_file(hubio_models.adapter / "adapter_model.safetensors")
    converted = load_file(model.path / "adapter_model.safetensors")
    assert all(torch.equal(converted[k], v) for k, v in original.items())


class _RunsCode:
    """A pickle payload that would create a file when unpickled by a plain ``torch.load``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused_and_its_code_never_runs(
    local_hub, hubio_models, tmp_path
):
    folder = tmp_path / "evil"
    shutil.copytree(hubio_models.expert, folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save({"model.embed_tokens.weight": _RunsCode(marker)}, folder / "pytorch_model.bin")
    repo_id = _upload(local_hub, folder, "evil")
    cache = tmp_path / "cache"
    with pytest.raises(UnsafeWeightsError, match="more than tensors"):
        pull(
            repo_id,
            allow_pickle=True,
            endpoint=local_hub.endpoint,
            token=local_hub.token,
            cache_dir=cache,
        )
    assert not marker.exists()
    assert "model.safetensors" not in _files(cache)  # no half conversion is left to reuse


def test_cli_pull_with_allow_pickle_warns_and_prints_the_converted_folder(
    local_hub, pickle_repo, tmp_path, capsys
):
    args = ["pull", pickle_repo, "--endpoint", local_hub.endpoint, "--token", local_hub.token]
    args += ["--cache-dir", str(tmp_path / "cache"), "--json"]
    assert main(args) != 0
    assert "--allow-pickle" in capsys.readouterr().err
    with pytest.warns(PickleWeightsWarning):
        assert main([*args, "--allow-pickle"]) == 0
    pulled = json.loads(capsys.readouterr().out)["models"][0]
    assert "model.safetensors" in pulled["files"]
    assert (Path(pulled["path"]) / "model.safetensors").is_file()
