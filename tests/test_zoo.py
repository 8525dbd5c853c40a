"""The test zoo: its models load with stock transformers/peft, its children learned their tasks,
its task files are honest, and building is deterministic, cached and atomic."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from hub_merge import zoo as zoo_mod
from hub_merge.errors import ConfigError
from hub_merge.zoo import Zoo, build_smol_zoo, build_tiny_zoo, load_zoo
from hub_merge.zoo import tiny as zoo_tiny

TINY_TASKS = ["add", "reverse", "sort", "uppercase"]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _answer_loss(model, tokenizer, rows: list[dict]) -> float:
    """Mean cross-entropy of answer tokens + EOS given the prompt (prompt tokens masked).

    Written out here, independent of the zoo's training code, so the test checks the models
    rather than the zoo's own arithmetic. One right-padded batch; padding is masked out.
    """
    seqs = []
    for row in rows:
        p = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        a = tokenizer(row["answer"], add_special_tokens=False)["input_ids"]
        seqs.append((p, a + [tokenizer.eos_token_id]))
    width = max(len(p) + len(a) for p, a in seqs)
    ids = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (p, a) in enumerate(seqs):
        ids[i, : len(p) + len(a)] = torch.tensor(p + a)
        mask[i, : len(p) + len(a)] = 1
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
    total, count = 0.0, 0
    for i, (p, a) in enumerate(seqs):
        for j, tok in enumerate(a):
            total -= float(logp[i, len(p) - 1 + j, tok])
        count += len(a)
    return total / count


def _front_matter(readme: Path) -> dict:
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


# --- the tiny zoo -------------------------------------------------------------------------------


def test_tiny_zoo_layout(tiny_zoo: Zoo) -> None:
    assert sorted(tiny_zoo.experts) == TINY_TASKS
    assert sorted(tiny_zoo.adapters) == TINY_TASKS
    assert sorted(tiny_zoo.tasks) == TINY_TASKS
    for folder in [tiny_zoo.base, *tiny_zoo.experts.values()]:
        for name in [
            "model.safetensors",
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "README.md",
        ]:
            assert (folder / name).is_file(), folder / name
    for folder in tiny_zoo.adapters.values():
        cfg = json.loads((folder / "adapter_config.json").read_text())
        assert Path(cfg["base_model_name_or_path"]) == tiny_zoo.base
        assert cfg["r"] == 8
        assert (folder / "adapter_model.safetensors").is_file()
    # The manifest reloads to the same record.
    assert load_zoo(tiny_zoo.root) == tiny_zoo
    assert set(tiny_zoo.all_models()) == set(tiny_zoo.repo_ids)


def test_tiny_zoo_cards_name_their_base(tiny_zoo: Zoo) -> None:
    base_id = tiny_zoo.repo_ids["base"]
    assert "base_model" not in _front_matter(tiny_zoo.base / "README.md")
    for task, folder in tiny_zoo.experts.items():
        meta = _front_matter(folder / "README.md")
        assert meta["base_model"] == base_id
        assert meta["base_model_relation"] == "finetune"
        assert meta["library_name"] == "transformers"
        assert meta["license"] == "apache-2.0"
        assert task in meta["tags"]
    for folder in tiny_zoo.adapters.values():
        meta = _front_matter(folder / "README.md")
        assert (meta["base_model"], meta["base_model_relation"]) == (base_id, "adapter")
        assert meta["library_name"] == "peft"


def test_tokenizer_is_byte_level_and_round_trips(tiny_zoo: Zoo) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_zoo.base)
    text = "sort: zyx= Ünïcode ✓"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (256, 257, 258)


def test_task_files_well_formed_and_disjoint_from_training(tiny_zoo: Zoo) -> None:
    for task, path in tiny_zoo.tasks.items():
        dev = _rows(path)
        train = _rows(tiny_zoo.train[task])
        assert 100 <= len(dev) <= 200
        for row in dev:
            assert set(row) == {"prompt", "answer"}
            assert row["prompt"].startswith(f"{task}: ") and row["prompt"].endswith("=")
            assert row["answer"]
        assert len({r["prompt"] for r in dev}) == len(dev)
        assert not {r["prompt"] for r in dev} & {r["prompt"] for r in train}
    # Answers are actually correct for the task, spot-checked on a few.
    rev = _rows(tiny_zoo.tasks["reverse"])[0]
    assert rev["answer"] == rev["prompt"][len("reverse: ") : -1][::-1]
    add = _rows(tiny_zoo.tasks["add"])[0]
    a, b = add["prompt"][len("add: ") : -1].split("+")
    assert add["answer"] == str(int(a) + int(b))


def test_each_expert_and_adapter_beats_base_on_its_task(tiny_zoo: Zoo) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_zoo.base)
    base = AutoModelForCausalLM.from_pretrained(tiny_zoo.base).eval()
    for task in TINY_TASKS:
        rows = _rows(tiny_zoo.tasks[task])[:48]
        base_loss = _answer_loss(base, tok, rows)
        expert = AutoModelForCausalLM.from_pretrained(tiny_zoo.experts[task]).eval()
        expert_loss = _answer_loss(expert, tok, rows)
        fresh_base = AutoModelForCausalLM.from_pretrained(tiny_zoo.base)
        adapted = PeftModel.from_pretrained(fresh_base, tiny_zoo.adapters[task]).eval()
        adapter_loss = _answer_loss(adapted, tok, rows)
        # A clear margin, not just noise: at least 0.3 nats per answer token.
        assert expert_loss < base_loss - 0.3, (task, base_loss, expert_loss)
        assert adapter_loss < base_loss - 0.3, (task, base_loss, adapter_loss)


def test_cache_is_reused_without_rebuilding(tiny_zoo: Zoo, monkeypatch) -> None:
    manifest = tiny_zoo.root / "zoo.json"
    before = manifest.stat().st_mtime_ns

    def no_build(*args, **kwargs):
        raise AssertionError("the cached zoo was rebuilt")

    monkeypatch.setattr(zoo_tiny, "_build_tiny", no_build)
    again = build_tiny_zoo(tiny_zoo.root.parent.parent)
    assert again == tiny_zoo
    assert manifest.stat().st_mtime_ns == before


@pytest.mark.slow
def test_rebuild_with_same_seed_gives_identical_tensors(tiny_zoo: Zoo, tmp_path: Path) -> None:
    fresh = build_tiny_zoo(tmp_path)
    assert fresh.root == (tmp_path / "zoo" / tiny_zoo.name).resolve()
    pairs = [(tiny_zoo.base, fresh.base)]
    pairs += [(tiny_zoo.experts[t], fresh.experts[t]) for t in TINY_TASKS]
    for old, new in pairs:
        a, b = load_file(old / "model.safetensors"), load_file(new / "model.safetensors")
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), (old, name)
    for t in TINY_TASKS:
        a = load_file(tiny_zoo.adapters[t] / "adapter_model.safetensors")
        b = load_file(fresh.adapters[t] / "adapter_model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
        assert (tiny_zoo.tasks[t]).read_bytes() == fresh.tasks[t].read_bytes()
    cfg = json.loads((fresh.adapters["sort"] / "adapter_config.json").read_text())
    assert Path(cfg["base_model_name_or_path"]) == fresh.base


# --- caching machinery, with a fake builder (fast) ----------------------------------------------


def _fake_builder(calls: list[int], fail: bool = False):
    def build(tmp: Path, final: Path) -> Zoo:
        calls.append(1)
        (tmp / "base").mkdir()
        (tmp / "base" / "config.json").write_text("{}")
        if fail:
            raise RuntimeError("crash mid-build")
        return Zoo(name="fake", root=final, base=final / "base")

    return build


def test_crashed_build_leaves_no_half_zoo(tmp_path: Path) -> None:
    calls: list[int] = []
    with pytest.raises(RuntimeError, match="crash"):
        zoo_mod.cached_build("fake", tmp_path, False, _fake_builder(calls, fail=True))
    assert not (tmp_path / "zoo" / "fake").exists()
    assert [p.name for p in (tmp_path / "zoo").iterdir() if not p.name.endswith(".lock")] == []
    with pytest.raises(ConfigError, match="not a built zoo"):
        load_zoo(tmp_path / "zoo" / "fake")


def test_concurrent_callers_build_once_and_force_rebuilds(tmp_path: Path) -> None:
    calls: list[int] = []
    results: list[Zoo] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(
                zoo_mod.cached_build("fake", tmp_path, False, _fake_builder(calls))
            )
        )
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(results) == 4 and all(r == results[0] for r in results)
    zoo_mod.cached_build("fake", tmp_path, True, _fake_builder(calls))
    assert len(calls) == 2
    assert (tmp_path / "zoo" / "fake" / "zoo.json").is_file()


def test_unknown_task_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown zoo task 'nope'"):
        zoo_mod.make_examples("nope", 3, seed=0)


def test_examples_are_seeded() -> None:
    a = zoo_mod.make_examples("sort", 20, seed=7)
    assert a == zoo_mod.make_examples("sort", 20, seed=7)
    assert a != zoo_mod.make_examples("sort", 20, seed=8)
    assert all(r["answer"] == "".join(sorted(r["prompt"][6:-1])) for r in a)


# --- the smol zoo (SmolLM2-135M; minutes to build once, then cached) ----------------------------


@pytest.mark.slow
def test_smol_lora_experts_beat_base_on_their_tasks() -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    smol = build_smol_zoo(progress=False)
    assert sorted(smol.adapters) == ["capitalize", "reverse", "sort", "uppercase"]
    assert (smol.base / "model.safetensors").is_file()
    assert _front_matter(smol.base / "README.md")["base_model"] == zoo_mod.SMOL_ORIGIN
    tok = AutoTokenizer.from_pretrained(smol.base)
    base = AutoModelForCausalLM.from_pretrained(smol.base, dtype=torch.float32).eval()
    assert base.config.tie_word_embeddings
    for task, adapter in smol.adapters.items():
        rows = _rows(smol.tasks[task])
        assert len(rows) == 200
        assert not {r["prompt"] for r in rows} & {r["prompt"] for r in _rows(smol.train[task])}
        rows = rows[:32]
        base_loss = _answer_loss(base, tok, rows)
        fresh = AutoModelForCausalLM.from_pretrained(smol.base, dtype=torch.float32)
        tuned = PeftModel.from_pretrained(fresh, adapter).eval()
        tuned_loss = _answer_loss(tuned, tok, rows)
        assert tuned_loss < base_loss - 0.3, (task, base_loss, tuned_loss)


# --- the smol-wide zoo's record (the zoo itself is built only by benchmarks/) -------------------


def test_manifest_keeps_which_task_each_expert_learned(tmp_path: Path) -> None:
    root = tmp_path / "wide"
    zoo = Zoo(
        name="wide",
        root=root,
        base=root / "base",
        adapters={"sort-a": root / "adapters" / "sort-a", "sort-b": root / "adapters" / "sort-b"},
        tasks={"sort": root / "tasks" / "sort.jsonl"},
        expert_tasks={"sort-a": "sort", "sort-b": "sort"},
    )
    root.mkdir()
    (root / "zoo.json").write_text(json.dumps(zoo.to_json()))
    again = load_zoo(root)
    assert again == zoo
    assert [again.task_of(n) for n in again.adapters] == ["sort", "sort"]
    # Older manifests have no such map: an expert is named after its task.
    assert "expert_tasks" not in Zoo(name="t", root=root, base=root / "base").to_json()
    assert Zoo(name="t", root=root, base=root / "base").task_of("sort") == "sort"


def test_smol_wide_refuses_zero_steps_before_building(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="steps and full_steps must be >= 1"):
        zoo_mod.build_smol_wide_zoo(tmp_path, steps=0)
    assert not (tmp_path / "zoo").exists()
