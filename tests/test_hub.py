"""Hub I/O: pulling pinned models and adapters, refusing unusable repos, discovery, offline use.

Tests that need a Hub run against the project's local server (fixture ``local_hub``) through the
real huggingface_hub client; nothing is mocked.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from hub_merge.errors import (
    AuthError,
    HubError,
    RemoteCodeError,
    UnsafeWeightsError,
    UnsupportedRepoError,
)
from hub_merge.hub import inspect_folder, parse_size, pull
from hub_merge.hub.convert import PickleWeightsWarning

# --- what a folder is (no Hub needed) ----------------------------------------------------------


def _pickle_only(src: Path, dst: Path) -> Path:
    """A copy of ``src`` whose weights are a pickle file instead of safetensors."""
    import torch
    from safetensors.torch import load_file

    shutil.copytree(src, dst)
    torch.save(load_file(str(dst / "model.safetensors")), dst / "pytorch_model.bin")
    (dst / "model.safetensors").unlink()
    return dst


def test_local_full_model_and_adapter_are_recognised(hubio_models):
    full = inspect_folder(hubio_models.expert)
    assert full.kind == "full" and full.revision is None and full.license == "mit"
    assert full.base_model == "org/base" and "model.safetensors" in full.files
    lora = inspect_folder(hubio_models.adapter)
    assert lora.kind == "adapter" and lora.base_model == str(hubio_models.base)
    assert (lora.adapter.rank, lora.adapter.alpha, lora.adapter.target_modules) == (
        4,
        8.0,
        ("q_proj", "v_proj"),
    )


def test_pickle_only_needs_opt_in(hubio_models, tmp_path):
    folder = _pickle_only(hubio_models.expert, tmp_path / "pickled")
    with pytest.raises(UnsafeWeightsError, match="allow_pickle=True"):
        inspect_folder(folder)
    with pytest.warns(PickleWeightsWarning):
        model = inspect_folder(folder, allow_pickle=True, cache_dir=tmp_path / "cache")
    # converted into the cache, never into the user's folder
    assert model.pickle and "model.safetensors" in model.files
    assert model.path.is_relative_to(tmp_path / "cache")
    assert not (folder / "model.safetensors").exists()


@pytest.mark.parametrize("how", ["auto_map", "code_file", "tokenizer_auto_map"])
def test_remote_code_is_refused(hubio_models, tmp_path, how):
    folder = tmp_path / how
    shutil.copytree(hubio_models.expert, folder)
    if how == "code_file":
        (folder / "modeling_custom.py").write_text("raise SystemExit('never run')\n")
    else:
        name = "config.json" if how == "auto_map" else "tokenizer_config.json"
        cfg = json.loads((folder / name).read_text())
        cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomModel"}
        (folder / name).write_text(json.dumps(cfg))
    with pytest.raises(RemoteCodeError, match="never runs remote code"):
        inspect_folder(folder)


def test_gguf_and_empty_folders_are_unsupported(tmp_path):
    gguf = tmp_path / "gguf"
    gguf.mkdir()
    (gguf / "model-Q4_K_M.gguf").write_bytes(b"GGUF")
    with pytest.raises(UnsupportedRepoError, match="GGUF"):
        inspect_folder(gguf)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("nothing here")
    with pytest.raises(UnsupportedRepoError, match="no model weights"):
        inspect_folder(empty)


def test_unreachable_endpoint_is_a_clear_hub_error_without_the_token():
    secret = "hf_NeverShowThisToken123"
    with pytest.raises(HubError, match="cannot reach") as info:
        pull("org/model", endpoint="http://127.0.0.1:9", token=secret)
    assert secret not in str(info.value)


def test_parse_size():
    assert parse_size("1.5GB") == 1_500_000_000
    assert parse_size("2GiB") == 2 * 1024**3
    assert parse_size("500") == 500
    with pytest.raises(HubError, match="500MB"):
        parse_size("lots")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- against the local Hub server --------------------------------------------------------------


@pytest.fixture
def hub(local_hub):
    """The local Hub server (tests/fixtures/localhub.py); a missing fixture is an error."""
    return local_hub


def _api(hub, token=None):
    from hub_merge.hub import get_api

    return get_api(hub.endpoint, token or hub.token)


def _upload(hub, folder: Path, name: str, message: str = "upload") -> str:
    api = _api(hub)
    repo_id = f"{hub.user}/{name}"
    api.create_repo(repo_id, exist_ok=True)
    return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=message).oid


def _two_commit_repo(hub, first: Path, second: Path, name: str) -> tuple[str, str, str]:
    api = _api(hub)
    repo_id = f"{hub.user}/{name}"
    sha1 = _upload(hub, first, name, "first")
    api.create_tag(repo_id, tag="v1", revision=sha1)
    api.create_branch(repo_id, branch="dev", revision=sha1)
    sha2 = _upload(hub, second, name, "second")
    assert sha1 != sha2
    return repo_id, sha1, sha2


@pytest.mark.parametrize("kind", ["full", "adapter"])
def test_pull_resolves_branch_tag_and_sha(hub, hubio_models, tmp_path, kind):
    from tests.fixtures.hubio import tiny_lora

    if kind == "full":
        first, second = hubio_models.base, hubio_models.expert
    else:
        base_id = f"{hub.user}/base"
        first = tiny_lora(tmp_path / "l1", hubio_models.base, base_name=base_id, seed=1)
        second = tiny_lora(tmp_path / "l2", hubio_models.base, base_name=base_id, seed=2)
    first = Path(shutil.copytree(first, tmp_path / "first"))  # never touch the shared fixture
    (first / "optimizer.pt").write_bytes(b"not needed for a merge")
    repo_id, sha1, sha2 = _two_commit_repo(hub, first, second, f"m-{kind}")
    kw = {"endpoint": hub.endpoint, "token": hub.token, "cache_dir": tmp_path / "cache"}
    for ref, want in [
        ("@v1", sha1),
        ("@dev", sha1),
        (f"@{sha1}", sha1),
        ("", sha2),
        ("@main", sha2),
    ]:
        model = pull(repo_id + ref, **kw)
        assert (model.repo_id, model.revision, model.kind) == (repo_id, want, kind)
        assert model.path.name == want  # the cache snapshot of that exact commit
        assert "optimizer.pt" not in {p.name for p in model.path.iterdir()}
    pulled_files = sorted(p.name for p in pull(f"{repo_id}@v1", **kw).path.iterdir())
    if kind == "adapter":
        assert model.base_model == f"{hub.user}/base" and model.adapter.rank == 4
        assert pulled_files == ["adapter_config.json", "adapter_model.safetensors"]
    else:
        assert "model.safetensors" in pulled_files and "tokenizer.json" in pulled_files
        assert model.license == "mit" and model.base_model == "org/base"  # from the 2nd card


def _refused_repo(hub, hubio_models, tmp_path, what: str) -> str:
    folder = tmp_path / what
    if what == "pickle":
        _pickle_only(hubio_models.expert, folder)
    elif what == "remote_code":
        shutil.copytree(hubio_models.expert, folder)
        cfg = json.loads((folder / "config.json").read_text())
        cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomModel"}
        (folder / "config.json").write_text(json.dumps(cfg))
    else:
        folder.mkdir()
        (folder / "model-Q4_K_M.gguf").write_bytes(b"GGUF" + bytes(64))
        (folder / "README.md").write_text("a gguf")
    _upload(hub, folder, f"refused-{what}")
    return f"{hub.user}/refused-{what}"


@pytest.mark.parametrize(
    ("what", "error"),
    [
        ("pickle", UnsafeWeightsError),
        ("remote_code", RemoteCodeError),
        ("gguf", UnsupportedRepoError),
    ],
)
def test_unusable_repos_are_refused_before_downloading_weights(
    hub, hubio_models, tmp_path, what, error
):
    repo_id = _refused_repo(hub, hubio_models, tmp_path, what)
    cache = tmp_path / "cache"
    with pytest.raises(error):
        pull(repo_id, endpoint=hub.endpoint, token=hub.token, cache_dir=cache)
    downloaded = {p.name for p in cache.rglob("*") if p.is_file()} if cache.exists() else set()
    assert not downloaded & {"pytorch_model.bin", "model.safetensors", "model-Q4_K_M.gguf"}
    if what == "pickle":
        with pytest.warns(PickleWeightsWarning):
            model = pull(
                repo_id, endpoint=hub.endpoint, token=hub.token, cache_dir=cache, allow_pickle=True
            )
        assert model.pickle and (model.path / "model.safetensors").is_file()


def test_discover_by_relation_license_and_size(hub, hubio_models, tmp_path):
    from click.testing import CliRunner

    from hub_merge.cli import cli
    from hub_merge.hub import discover
    from tests.fixtures.hubio import card

    base_id = f"{hub.user}/tree-base"
    _upload(hub, hubio_models.base, "tree-base")
    for name, src, relation, lic in [
        ("ft-mit", hubio_models.expert, "finetune", "mit"),
        ("ft-apache", hubio_models.expert, "finetune", "apache-2.0"),
        ("big-ft", hubio_models.wide, "finetune", "apache-2.0"),
        ("lora", hubio_models.adapter, "adapter", "apache-2.0"),
    ]:
        folder = tmp_path / name
        shutil.copytree(src, folder)
        (folder / "README.md").write_text(card(base_id, relation, license=lic))
        _upload(hub, folder, name)
    kw = {"endpoint": hub.endpoint, "token": hub.token}
    adapters = discover(base_id, ["adapter"], **kw)
    assert [(c.id, c.relation) for c in adapters] == [(f"{hub.user}/lora", "adapter")]
    finetunes = {c.id: c for c in discover(base_id, ["finetune"], **kw)}
    assert set(finetunes) == {f"{hub.user}/{n}" for n in ("ft-mit", "ft-apache", "big-ft")}
    assert all(c.has_safetensors is not False for c in finetunes.values())
    apache = discover(base_id, ["finetune"], license="apache-2.0", **kw)
    assert {c.id for c in apache} == {f"{hub.user}/ft-apache", f"{hub.user}/big-ft"}
    small_limit = (hubio_models.expert / "model.safetensors").stat().st_size + 1000
    small = discover(base_id, ["finetune"], max_size=small_limit, **kw)
    assert {c.id for c in small} == {f"{hub.user}/ft-mit", f"{hub.user}/ft-apache"}
    result = CliRunner().invoke(
        cli,
        [
            "discover",
            base_id,
            "--relation",
            "adapter",
            "--json",
            "--endpoint",
            hub.endpoint,
            "--token",
            hub.token,
        ],
    )
    assert result.exit_code == 0, result.output
    assert [c["id"] for c in json.loads(result.output)] == [f"{hub.user}/lora"]


def test_dropped_download_resumes_and_is_verified(hub, hubio_models, tmp_path):
    _upload(hub, hubio_models.expert, "flaky")
    hub.server.fail_next_download("model.safetensors", after_bytes=1000)
    model = pull(
        f"{hub.user}/flaky", endpoint=hub.endpoint, token=hub.token, cache_dir=tmp_path / "c"
    )
    assert _sha256(model.path / "model.safetensors") == _sha256(
        hubio_models.expert / "model.safetensors"
    )
    pending = hub.server.hub.fail_downloads
    assert "model.safetensors" not in pending  # the drop really happened during this pull


def test_offline_pull_from_a_filled_cache(hub, hubio_models, tmp_path, monkeypatch):
    from huggingface_hub import constants

    sha = _upload(hub, hubio_models.expert, "cached")
    cache = tmp_path / "cache"
    online = pull(
        f"{hub.user}/cached@{sha}", endpoint=hub.endpoint, token=hub.token, cache_dir=cache
    )
    pull(
        f"{hub.user}/cached", endpoint=hub.endpoint, token=hub.token, cache_dir=cache
    )  # caches refs/main
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    dead = "http://127.0.0.1:9"
    for ref in (f"{hub.user}/cached@{sha}", f"{hub.user}/cached"):
        offline = pull(ref, endpoint=dead, cache_dir=cache)
        assert (offline.revision, offline.path, offline.kind) == (sha, online.path, "full")
    with pytest.raises(HubError, match="not in the local cache"):
        pull(f"{hub.user}/never-pulled", endpoint=dead, cache_dir=cache)


def test_bad_tokens_and_missing_repos_give_clear_errors(hub, hubio_models, tmp_path):
    _upload(hub, hubio_models.expert, "tokens")
    expired = "hf_ExpiredTokenThatServerRejects1"
    with pytest.raises(AuthError, match="invalid or expired") as info:
        pull(f"{hub.user}/tokens", endpoint=hub.endpoint, token=expired, cache_dir=tmp_path / "c")
    assert expired not in str(info.value)
    with pytest.raises(HubError, match="was not found"):
        pull(
            f"{hub.user}/no-such-repo",
            endpoint=hub.endpoint,
            token=hub.token,
            cache_dir=tmp_path / "c",
        )
    with pytest.raises(HubError, match="revision 'nope' does not exist"):
        pull(
            f"{hub.user}/tokens@nope",
            endpoint=hub.endpoint,
            token=hub.token,
            cache_dir=tmp_path / "c",
        )


def test_cli_pull_checks_local_models_against_a_base(hubio_models):
    from click.testing import CliRunner

    from hub_merge.cli import cli, main

    args = [
        "pull",
        str(hubio_models.expert),
        str(hubio_models.adapter),
        "--base",
        str(hubio_models.base),
        "--json",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["compatible"] and [m["kind"] for m in data["models"]] == ["full", "adapter"]
    assert main(["pull", str(hubio_models.wide), "--base", str(hubio_models.base)]) == 3


def test_discover_refuses_offline_mode(monkeypatch):
    from huggingface_hub import constants

    from hub_merge.hub import discover

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match="HF_HUB_OFFLINE"):
        discover("org/base")


def test_xet_is_off_for_other_endpoints_and_back_on_for_the_public_hub(monkeypatch):
    """One process that talks to a local Hub and then to the Hub keeps Xet for the Hub, unless
    the user's HF_HUB_DISABLE_XET turned it off."""
    from huggingface_hub import constants

    from hub_merge.hub import client

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    for off_by_user in (False, True):
        monkeypatch.setattr(client, "_XET_OFF_BY_USER", off_by_user)
        client.get_api("http://127.0.0.1:1")
        assert constants.HF_HUB_DISABLE_XET is True
        client.get_api(client.PUBLIC_ENDPOINT)
        assert constants.HF_HUB_DISABLE_XET is off_by_user
