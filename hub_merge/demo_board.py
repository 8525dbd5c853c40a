"""The demo's leaderboard path: greedy and DAM through ``compare_strategies``, then the answers
of the published model.

``hub-merge demo`` (see :mod:`hub_merge.demo`) runs the mission's kinship-guided greedy search
and DAM on one dev/test split, with one set of baselines and one score cache
(:func:`hub_merge.leaderboard.compare_strategies`), publishes the row chosen on dev scores
(:func:`hub_merge.publish.publish_row`) and then lets the model pulled back from the Hub answer
the held-out test prompts. This module holds the pieces of that path that are not steps of the
demo itself: the compare's settings, the published model's exact-match count, and the tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .comparison import Comparison, ComparisonRow, format_score
from .rss import peak_rss_bytes  # noqa: F401 - re-exported: the demo's peak, as before
from .search.strategies.dam import DamStrategy  # its name, without naming the method here

__all__ = [
    "DAM_SETTINGS",
    "DEMO_STRATEGIES",
    "Answers",
    "answer_test_prompts",
    "compare_settings",
    "generate_answers",
    "comparison_table",
    "peak_rss_bytes",
    "row_label",
    "leaderboard_table",
    "held_out_table",
]

# The demo's rows: the mission's method, and the strategy that wins on the smol zoo (issue 27:
# DAM trained on the searches' 16 dev rows per task reached 1.31 test loss where the uniform
# average has 2.48).
DEMO_STRATEGIES: tuple[str, ...] = ("greedy", DamStrategy.name)
# DAM's settings in the demo, for the demo's goal (at most 8 minutes on 2 CPU cores with the zoo
# cached, and a published loss at most 60% of the uniform average's). A step costs one merged
# forward and backward over `train_batch_size` rows per expert, so the demo takes 4 rows per
# expert (16 a step) instead of DAM's 8, and 30 steps: 120 rows seen per expert. Measured
# before on the smol zoo (benchmarks/RESULTS.md, section 3c, and issue 27): 12 steps of 4 rows
# gave 0.61x the uniform average's loss, 60 steps of 8 rows 0.53x, so 30 steps of 4 sits between
# (not yet measured at these exact settings). The tiny zoo learns nothing from merging: a few
# steps show the row at no cost.
# The smol demo keeps the teachers' distributions in float16 (0.15 GB instead of 0.3 GB: with
# it DAM's training step is the demo's peak, 2.85 GiB in float32, over its 3 GB goal).
DAM_SETTINGS = {
    "smol": {"steps": 30, "train_batch_size": 4, "teacher_dtype": "float16"},
    "tiny": {"steps": 5, "train_batch_size": 4},
}


def compare_settings(
    strategies: Sequence[str],
    *,
    quick: bool,
    k: int,
    generations: int | None,
    dam_steps: int | None,
) -> dict[str, dict[str, Any]]:
    """Each listed strategy's settings in the demo (greedy: top-k and generations; DAM: steps)."""
    out: dict[str, dict[str, Any]] = {}
    for name in strategies:
        if name == "greedy":
            out[name] = {"k": k, "generations": generations or 2}
        elif name == DamStrategy.name:
            out[name] = dict(DAM_SETTINGS["tiny" if quick else "smol"])
            if dam_steps is not None:
                out[name]["steps"] = dam_steps
    return out


@dataclass(frozen=True)
class Answers:
    """What the published model answered on the test rows: exact matches per task, examples."""

    per_task: Mapping[str, tuple[int, int]]  # task -> (answered exactly, test prompts)
    examples: Mapping[str, tuple[str, str, str]] = field(default_factory=dict)  # prompt/want/got

    @property
    def exact(self) -> int:
        return sum(n for n, _ in self.per_task.values())

    @property
    def total(self) -> int:
        return sum(n for _, n in self.per_task.values())

    def sentence(self) -> str:
        per = ", ".join(f"{t} {n}/{m}" for t, (n, m) in self.per_task.items())
        return f"answers {self.exact} of {self.total} test prompts exactly: {per}"

    def to_json(self) -> dict[str, Any]:
        return {
            "exact": self.exact,
            "total": self.total,
            "per_task": {t: list(v) for t, v in self.per_task.items()},
        }


def answer_test_prompts(
    model_folder: Path,
    base_folder: Path,
    split: Any,
    *,
    device: str = "auto",
    batch_size: int = 16,
) -> Answers:
    """The model in ``model_folder`` (a full model or an adapter of the base) on the test rows.

    The exact-match count uses the same scorer as the leaderboard's EM column
    (:class:`hub_merge.evaluate.Evaluator`), so the count printed for the published model is the
    one its row shows; the examples are its greedy answer to each task's first test prompt.
    """
    import torch
    from transformers import AutoTokenizer

    from .evaluate import Evaluator

    model, on = _answering_model(model_folder, base_folder, device)
    tokenizer = AutoTokenizer.from_pretrained(base_folder)
    tasks = [t for t in split.test if t.examples]
    scores = Evaluator(
        tasks, tokenizer, metric="exact_match", batch_size=batch_size, device=on
    ).score(model)
    per_task = {t.name: (round(scores[t.name] * len(t.examples)), len(t.examples)) for t in tasks}
    examples: dict[str, tuple[str, str, str]] = {}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for task in tasks:
        ex = task.examples[0]
        ids = tokenizer(ex.prompt, return_tensors="pt").to(on)
        with torch.no_grad():
            gen = model.generate(
                **ids,
                max_new_tokens=len(tokenizer(ex.answer)["input_ids"]) + 2,
                do_sample=False,
                pad_token_id=pad,
            )
        text = tokenizer.decode(gen[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        examples[task.name] = (ex.prompt, ex.answer, text.strip())
    return Answers(per_task=per_task, examples=examples)


def generate_answers(
    folder: Path, task_files: Mapping[str, Any], tasks: list[str], device: str
) -> dict[str, tuple]:
    """Greedy answers of the pulled-back merge to the first dev example of each task."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .evaluate import load_tasks
    from .tensors import resolve_device

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    model.to(resolve_device(device))
    out: dict[str, tuple[str, str, str]] = {}
    for task in load_tasks([str(task_files[t]) for t in tasks], limit=1):
        ex = task.examples[0]
        ids = tok(ex.prompt, return_tensors="pt").to(model.device)
        with torch.no_grad():
            gen = model.generate(
                **ids,
                max_new_tokens=len(tok(ex.answer)["input_ids"]) + 2,
                do_sample=False,
                pad_token_id=tok.pad_token_id or tok.eos_token_id,
            )
        text = tok.decode(gen[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        out[task.name] = (ex.prompt, ex.answer, text.strip())
    return out


def _answering_model(model_folder: Path, base_folder: Path, device: str) -> tuple[Any, Any]:
    """The model to answer with, and its device: one copy of its weights in memory.

    A full model is read as it is (the base is not loaded beside it: the demo's last step
    must not hold two models); an adapter is applied to its base through a ``MergeSession``.
    """
    import torch

    from .tensors import is_adapter_folder, resolve_device

    if not is_adapter_folder(model_folder):
        from transformers import AutoModelForCausalLM

        on = resolve_device(device)
        model = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32)
        return model.to(on).eval(), on
    from .merge import MergeSession

    session = MergeSession(base_folder, device=device)
    handle = session.load(model_folder)
    state = {k: handle.tensor(k, session.device) for k in session.names}
    return session.to_model(state).eval(), session.device


_KEY = (
    "*: the recommended row (best on the dev rows). test, dev: the combined score on those rows; "
    "EM: test exact match; read: dev rows / training rows / whether it used the task-to-expert "
    "map; steps: training steps."
)


def leaderboard_table(board: Any, published: str | None = None) -> Any:
    """A rich Table of the leaderboard, narrow enough for a terminal: each row's combined test
    and dev scores, test exact match, the rows it read and what it cost (the per-task columns
    are in :func:`held_out_table`, everything in RUN/leaderboard.md); its notes as the caption.
    ``published`` marks the row the demo published."""
    from rich.table import Table

    full = board.table()[1:]  # the leaderboard's own cells (marks, spreads, dashes)
    head = board.table()[0]
    col = {h: i for i, h in enumerate(head)}
    combined = board.combined_label
    table = Table(
        title=f"Leaderboard: {combined} {board.metric} "
        f"({'lower' if board.lower_is_better else 'higher'} is better)",
        caption="\n".join([_KEY, *board.notes()]),
        caption_justify="left",
    )
    keys = [f"test {combined}", "test EM", f"dev {combined}", "rows read (dev/train/task map)"]
    keys += ["evals", "train steps", "wall s"]
    shown = ["test", "EM", "dev", "read", "evals", "steps", "wall s"]
    table.add_column("row", overflow="fold", min_width=16)
    for header, key in zip(shown, keys, strict=True):
        width = max(len(header), *(len(cells[col[key]]) for cells in full))  # never cut
        table.add_column(header, justify="right", no_wrap=True, min_width=width)
    rec = board.recommended()
    for r, cells in zip(board.rows, full, strict=True):
        name = r.name if r.kind == "strategy" else r.label
        if rec is not None and r.name == rec.name:
            name += " *"
        style = "bold green" if published is not None and r.name == published else ""
        table.add_row(name, *(cells[col[k]] for k in keys), style=style)
    return table


def held_out_table(board: Any, published: str | None = None) -> Any:
    """The leaderboard on the held-out test rows only: each row's test score per task and
    combined, and its exact match; the published row in bold green."""
    from rich.table import Table

    lower = board.lower_is_better
    table = Table(
        title=f"The leaderboard on the held-out test rows ({board.metric})",
        caption=f"{'Lower' if lower else 'Higher'} is better; EM: exact match.",
        caption_justify="left",
    )
    table.add_column("model", overflow="fold")
    for task in board.tasks:
        table.add_column(task, justify="right", no_wrap=True, min_width=5)
    table.add_column(board.combined_label, justify="right", no_wrap=True, min_width=5)
    table.add_column("EM", justify="right", no_wrap=True, min_width=5)
    rec = board.recommended()
    for r in board.rows:
        label = r.label
        if r.kind == "strategy":  # a strategy whose best candidate was the average says so
            kept = r.best_seed().node == "uniform"
            label = f"{r.name} ({'kept the uniform average' if kept else 'winner'})"
        if published is not None and r.name == published:
            label += " - published"
        elif rec is not None and r.name == rec.name:
            label += " - recommended"
        table.add_row(
            label,
            *(format_score(r.task_mean("test", t)) for t in board.tasks),
            format_score(board.combined(r.test_fitness)),
            format_score(r.exact_match()),
            style="bold green" if published is not None and r.name == published else "",
        )
    return table


def board_rows_json(board: Any) -> list[dict[str, Any]]:
    """The leaderboard's rows as the demo's JSON ``comparison``: test scores, combined, EM."""
    out = []
    for r in board.rows:
        out.append(
            {
                "model": r.name,
                "role": r.kind,
                "label": r.label,
                "scores": {t: r.task_mean("test", t) for t in board.tasks},
                "combined": board.combined(r.test_fitness),
                "dev_combined": board.combined(r.dev_fitness),
                "exact_match": r.exact_match(),
            }
        )
    return out


def row_label(row: ComparisonRow) -> str:
    """A comparison row's name in the demo's table and JSON: ``winner g1-1``, ``add``..."""
    return f"winner {row.id}" if row.subject else row.label


def comparison_table(cmp: Comparison) -> Any:
    """A rich Table: each model's score per task and combined, on the held-out rows if any.

    It displays :func:`hub_merge.comparison.compare`'s rows as they are; the best combined
    score is in bold green.
    """
    from rich.table import Table

    split = cmp.split
    rows_are = "held-out test rows" if split == "test" else "dev rows"
    table = Table(title=f"{cmp.metric} on the {rows_are} ({cmp.direction} is better)")
    rows = cmp.shown(split)
    table.add_column("model", no_wrap=True, min_width=max(len(row_label(r)) for r in rows))
    for task in cmp.tasks:
        table.add_column(task, justify="right")
    table.add_column(cmp.combined_label, justify="right")
    best = cmp.best(split)
    for row in rows:
        scores = row.scores(split)
        style = "bold green" if best is not None and row.id == best.id else ""
        cells = [format_score(scores.get(t)) for t in cmp.tasks]
        table.add_row(row_label(row), *cells, format_score(row.combined(split)), style=style)
    return table
