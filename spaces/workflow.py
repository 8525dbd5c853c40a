"""The Space's non-UI logic: one user's session folder, task files, a cancellable search run.

``app.py`` stays a thin Gradio layer over this module and the hub-merge Python API. Nothing here
is global: every piece of a user's work (pulled models, task files, runs, plots) lives in that
user's :class:`Session` folder, which Gradio hands back only to the browser tab that made it.
"""

from __future__ import annotations

import contextvars
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from space_limits import SpaceLimits

from hub_merge.errors import ConfigError, TaskFileError

# Seed of the built-in task examples: any fixed value works; fixed keeps runs reproducible.
BUILTIN_SEED = 2024
_ID_SPLIT = re.compile(r"[\s,]+")


def parse_ids(text: str | None) -> list[str]:
    """Model ids pasted one per line (or comma separated), in order, without repeats."""
    out: list[str] = []
    for part in _ID_SPLIT.split(text or ""):
        if part and part not in out:
            out.append(part)
    return out


def merge_ids(*groups: list[str] | None) -> list[str]:
    out: list[str] = []
    for group in groups:
        for ref in group or []:
            if ref and ref not in out:
                out.append(ref)
    return out


class SearchRun:
    """``hub_merge.search.search`` in a worker thread, so the UI can poll it for live plots and cancel it.

    Cancelling is cooperative and deterministic: :meth:`cancel` sets an event the search core
    checks before and after each candidate is scored (``SearchConfig.cancel``), so a cancel that
    arrives before the last candidate is scored always ends the run ``interrupted`` (resumable),
    and the worker is free as soon as the candidate being scored is done. A watchdog cancels the
    run when its wall time is spent, or when the page polling it stops (a closed tab).

    The search runs in a copy of the caller's context so that Gradio's ``track_tqdm`` progress
    (bound to the calling event through a context variable) follows the search's tqdm bars.
    """

    def __init__(
        self,
        config: Any,
        *,
        max_seconds: float | None = None,
        idle_seconds: float | None = None,
        runner: Any = None,
    ) -> None:
        self.config = config
        self.stop = threading.Event()
        config.cancel = self.stop
        self.result: Any = None
        self.error: BaseException | None = None
        self.cancelled = False  # the search stopped on a cancel (state saved as interrupted)
        self.reason: str | None = None  # why it was asked to stop
        self.max_seconds, self.idle_seconds = max_seconds, idle_seconds
        self._runner = runner
        self._beat = time.monotonic()
        ctx = contextvars.copy_context()
        self._thread = threading.Thread(target=ctx.run, args=(self._target,), daemon=True)

    def _target(self) -> None:
        from hub_merge.search import search

        try:
            self.result = (self._runner or search)(self.config)
        except KeyboardInterrupt:
            self.cancelled = True  # search saved its state before re-raising
        except BaseException as err:  # noqa: BLE001 - reported to the user by the UI thread
            self.error = err

    def start(self) -> SearchRun:
        self._thread.start()
        if self.max_seconds or self.idle_seconds:
            threading.Thread(target=self._watch, daemon=True).start()
        return self

    def _watch(self) -> None:
        started = time.monotonic()
        while not self.wait(0.5):
            now = time.monotonic()
            if self.max_seconds and now - started > self.max_seconds:
                self.cancel(f"the Space's limit of {self.max_seconds:.0f} s per search was reached")
            elif self.idle_seconds and now - self._beat > self.idle_seconds:
                self.cancel("the page stopped following it")

    def heartbeat(self) -> None:
        """The page is still following the run (called at each poll)."""
        self._beat = time.monotonic()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True once the search has ended (any way)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def cancel(self, reason: str = "cancelled") -> None:
        """Ask the search to stop at its next candidate boundary; the first reason is kept."""
        if not self.stop.is_set():
            self.reason = reason
            self.stop.set()


class Sessions:
    """Every open session's folder, registered when the folder is made (before any download).

    At most ``max_open`` at once; a session idle for ``ttl`` seconds is closed (its folder
    deleted) the next time a session is made, which catches any folder Gradio never saw.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[Path, Session] = {}

    def register(self, session: Session, max_open: int | None, ttl: float | None) -> None:
        self.reap(ttl)
        with self._lock:
            if max_open is not None and len(self._open) >= max_open:
                raise ConfigError(
                    f"This Space has {len(self._open)} sessions open, its limit; try again later."
                )
            self._open[session.root] = session

    def forget(self, session: Session) -> None:
        with self._lock:
            self._open.pop(session.root, None)

    def reap(self, ttl: float | None) -> None:
        if not ttl:
            return
        now = time.monotonic()
        with self._lock:
            stale = [s for s in self._open.values() if now - s.last_used > ttl]
        for session in stale:
            session.close()

    def __len__(self) -> int:
        return len(self._open)


SESSIONS = Sessions()


@dataclass
class Session:
    """One browser tab's work: a private temp folder, and what the steps found so far."""

    root: Path
    base: str | None = None
    experts: list[str] = field(default_factory=list)
    run_dir: Path | None = None
    runs: int = 0
    search: SearchRun | None = field(default=None, repr=False)
    compare_dir: Path | None = None  # the last compare's folder (the Compare tab)
    compare: SearchRun | None = field(default=None, repr=False)
    last_used: float = field(default_factory=time.monotonic)

    @classmethod
    def create(
        cls,
        parent: str | Path | None = None,
        *,
        max_open: int | None = None,
        ttl: float | None = None,
    ) -> Session:
        """A session in a fresh private folder under ``parent`` (default: the system temp dir),
        registered in ``SESSIONS`` before anything is put in it."""
        SESSIONS.reap(ttl)
        if max_open is not None and len(SESSIONS) >= max_open:
            raise ConfigError(
                f"This Space has {len(SESSIONS)} sessions open, its limit; try again later."
            )
        if parent is not None:
            Path(parent).mkdir(parents=True, exist_ok=True)
        session = cls(root=Path(tempfile.mkdtemp(prefix="hub-merge-space-", dir=parent)))
        try:
            SESSIONS.register(session, max_open, None)
        except ConfigError:
            shutil.rmtree(session.root, ignore_errors=True)
            raise
        return session

    def touch(self) -> None:
        self.last_used = time.monotonic()

    @property
    def cache_dir(self) -> Path:
        """Hub download cache of this session only: a private model one user could pull must
        never be served from disk to another user."""
        return self.root / "hub-cache"

    def new_run_dir(self) -> Path:
        self.runs += 1
        self.run_dir = self.root / f"run-{self.runs}"
        return self.run_dir

    def new_compare_dir(self) -> Path:
        """A fresh folder for a compare (its runs, score cache and leaderboard)."""
        self.runs += 1
        self.compare_dir = self.root / f"compare-{self.runs}"
        return self.compare_dir

    def close(self) -> None:
        """Stop a running search or compare and delete the session's folder (the tab closed)."""
        for run in (self.search, self.compare):
            if run is not None and run.running:
                run.cancel("the session ended")
                run.wait(30)
        shutil.rmtree(self.root, ignore_errors=True)
        SESSIONS.forget(self)


def close_session(session: Session | None) -> None:
    if isinstance(session, Session):
        session.close()


def task_files(
    session: Session,
    builtin: list[str] | None,
    n_examples: int,
    uploads: list[Any] | None,
    limits: SpaceLimits | None = None,
) -> list[str]:
    """JSONL task files for a search: generated built-in tasks plus the user's uploads.

    Uploads keep their file name, since the task name is the file stem. Each upload is checked
    against ``limits`` (size, rows, prompt and answer length) and parsed before the search
    starts; every error names the uploaded file's base name, never a server path.
    """
    from hub_merge.evaluate.tasks import load_task
    from hub_merge.zoo import TASKS, make_examples

    limits = limits or SpaceLimits()
    if len(builtin or []) + len(uploads or []) > limits.max_task_files:
        raise TaskFileError(f"This Space takes at most {limits.max_task_files} tasks per search.")
    limits.check_rows(int(n_examples), "Examples per built-in task")
    folder = session.root / f"tasks-{session.runs + 1}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    paths: list[str] = []
    for task in builtin or []:
        if task not in TASKS:
            raise ConfigError(f"Unknown built-in task {task!r}; choose from {', '.join(TASKS)}.")
        rows = make_examples(task, int(n_examples), seed=BUILTIN_SEED)
        path = folder / f"{task}.jsonl"
        path.write_text("".join(_json_line(r) for r in rows), encoding="utf-8")
        paths.append(str(path))
    for upload in uploads or []:
        src = Path(upload if isinstance(upload, str) else getattr(upload, "name", upload))
        if src.suffix.lower() != ".jsonl":
            raise TaskFileError(
                f"{src.name} is not a .jsonl file; upload JSONL with one "
                '{"prompt": ..., "answer": ...} object per line.'
            )
        dst = folder / src.name
        if dst.exists():
            raise TaskFileError(f"Two tasks are named {src.stem!r}; rename one of the files.")
        limits.check_task_file(src, src.name)
        shutil.copyfile(src, dst)
        try:
            load_task(dst)  # every line's shape, checked now: the search would stop on it later
        except TaskFileError as err:
            raise TaskFileError(str(err).replace(str(dst), src.name)) from None
        paths.append(str(dst))
    if not paths:
        raise TaskFileError("Pick at least one built-in task or upload a JSONL task file.")
    return paths


def _json_line(row: dict[str, str]) -> str:
    import json

    return json.dumps(row, ensure_ascii=False) + "\n"


def live_fitness_plot(session: Session, run_dir: Path) -> str | None:
    """Plot fitness by generation from the tree the search checkpoints after each generation."""
    from hub_merge.lineage import FamilyTree
    from hub_merge.search.plots import plot_fitness

    tree_path = run_dir / "family_tree.json"
    if not tree_path.is_file():
        return None
    try:
        tree = FamilyTree.load(tree_path)
        if not tree.generations:
            return None
        # a new name per generation, so the browser does not show a cached image
        out = session.root / "live" / f"{run_dir.name}-gen{len(tree.generations)}.png"
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            plot_fitness(tree, out)
        return str(out)
    except (OSError, ValueError, KeyError):  # a checkpoint mid-write; the next poll gets it
        return None


def _saved_tree(run_dir: Path) -> Any:
    """The run's family tree as last saved, or None (not written yet, or caught mid-write)."""
    from hub_merge.lineage import FamilyTree

    tree_path = run_dir / "family_tree.json"
    if not tree_path.is_file():
        return None
    try:
        return FamilyTree.load(tree_path)
    except (OSError, ValueError, KeyError):
        return None


def generation_table(run_dir: Path) -> list[list[Any]]:
    """Rows of generation, best fitness, best node, top-k kinship (for a progress table)."""
    tree = _saved_tree(run_dir)
    if tree is None:
        return []
    return [
        [
            g.generation,
            round(g.best_fitness, 5) if g.best_fitness is not None else None,
            g.best_id,
            round(g.top_kinship, 4) if g.top_kinship is not None else None,
        ]
        for g in tree.generations
    ]


# Greedy's settings the Space shows as sliders and a dropdown; every other setting of every
# strategy is edited as JSON, prefilled with the strategy's defaults.
GREEDY_CONTROLS = ("k", "generations", "method")


def strategy_defaults(name: str) -> str:
    """A strategy's settings and their defaults as JSON (greedy's slider settings left out)."""
    import dataclasses
    import json

    from hub_merge.search.strategy import get_strategy

    settings = dataclasses.asdict(get_strategy(name).settings_type())
    if name == "greedy":
        settings = {k: v for k, v in settings.items() if k not in GREEDY_CONTROLS}
        settings.pop("parameters", None)  # filled from the method
    return json.dumps(settings, indent=1)


def strategy_settings(name: str, text: str | None, greedy: dict[str, Any]) -> dict[str, Any]:
    """The settings a search gets: the JSON box, and greedy's sliders when greedy is chosen."""
    import json

    try:
        settings = json.loads(text) if (text or "").strip() else {}
    except json.JSONDecodeError as err:
        raise ConfigError(f"Strategy settings are not valid JSON ({err.msg}).") from None
    if not isinstance(settings, dict):
        raise ConfigError('Strategy settings must be a JSON object, e.g. {"layer_groups": 2}.')
    if name == "greedy":
        settings = {**settings, **greedy}
    return settings


def baselines_table(run_dir: Path) -> list[list[Any]]:
    """The winner, then each baseline (``hub_merge.comparison``): dev and test combined, test per task.

    The numbers are the card's and the CLI's: the run's task weights and combine rule applied
    once, each score in the metric's own direction, printed to 4 significant digits.
    """
    from hub_merge.comparison import compare, format_score

    tree = _saved_tree(run_dir)
    if tree is None or tree.winner is None:
        return []
    cmp = compare(tree)
    rows = []
    for row in cmp.shown("dev"):
        test = row.test
        rows.append(
            [
                f"{row.label} (winner)" if row.subject else row.label,
                format_score(row.dev_combined),
                format_score(row.test_combined) if test else None,
                ", ".join(f"{t} {format_score(test[t])}" for t in cmp.tasks if t in test),
            ]
        )
    return rows


# --- the Compare tab ----------------------------------------------------------------------------


def compare_settings(text: str | None, strategies: list[str]) -> dict[str, dict[str, Any]]:
    """Each strategy's own settings from the Compare tab's JSON box (``{"dam": {"steps": 30}}``);
    a strategy that is not compared, or settings that are not an object, are refused."""
    import json

    try:
        settings = json.loads(text) if (text or "").strip() else {}
    except json.JSONDecodeError as err:
        raise ConfigError(f"Strategy settings are not valid JSON ({err.msg}).") from None
    if not isinstance(settings, dict) or not all(isinstance(v, dict) for v in settings.values()):
        raise ConfigError(
            'Compare settings take {"strategy": {"setting": value}}, e.g. {"dam": {"steps": 30}}.'
        )
    unknown = sorted(set(settings) - set(strategies))
    if unknown:
        raise ConfigError(
            f"Settings given for {', '.join(unknown)}, which is not among the strategies "
            f"compared ({', '.join(strategies)})."
        )
    return settings


def compare_progress(folder: Path, total: int) -> int:
    """How many of a compare's ``total`` runs have finished (each writes its ``row.json``)."""
    return min(total, sum(1 for _ in folder.glob("*/row.json"))) if folder.is_dir() else 0


def leaderboard_rows(folder: Path) -> tuple[list[str], list[list[str]], str]:
    """The compare's leaderboard as (headers, rows, notes in markdown), or empty if none yet."""
    from hub_merge.leaderboard import load_leaderboard

    if not (folder / "leaderboard.json").is_file():
        return [], [], ""
    try:
        board = load_leaderboard(folder)
    except ConfigError:  # caught mid-write; the next poll gets it
        return [], [], ""
    table = board.table()
    return table[0], table[1:], "\n\n".join(board.notes())


def publishable_rows(folder: Path) -> list[str]:
    """The leaderboard rows that are one model to publish (strategies' winners, the uniform
    average), recommended first."""
    from hub_merge.leaderboard import load_leaderboard

    if not (folder / "leaderboard.json").is_file():
        return []
    board = load_leaderboard(folder)
    rec = board.recommended()
    names = [r.name for r in board.rows if r.kind in ("strategy", "uniform", "moe")]
    if rec is not None and rec.name in names:
        names.remove(rec.name)
        names.insert(0, rec.name)
    return names


def user_token(typed: str | None, oauth: Any) -> str | bool:
    """The caller's token (typed, else the OAuth login's ``gr.OAuthToken``), else False.

    False (not None) stops huggingface_hub from falling back to the server's own HF_TOKEN or
    login: an anonymous visitor must never act with the Space owner's rights.
    """
    if typed and typed.strip():
        return typed.strip()
    if oauth is not None and oauth.token:
        return oauth.token
    return False
