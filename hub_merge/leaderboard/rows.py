"""Reading a finished compare folder back: its leaderboard, and the model folder of a row.

``hub-merge push RUN --row NAME`` publishes a row's model (default: the recommended row); this
module says which run and node that is, and the card section that carries the leaderboard.
No torch, no Hub: ``hub_merge.publish`` does the publishing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .board import Leaderboard

BOARD_FILE = "leaderboard.json"


def is_compare_folder(folder: str | Path) -> bool:
    """Whether ``folder`` is a ``hub-merge compare`` folder (it holds a leaderboard)."""
    return (Path(folder) / BOARD_FILE).is_file() and (Path(folder) / "compare.json").is_file()


def load_leaderboard(folder: str | Path) -> Leaderboard:
    """The leaderboard a compare wrote. Raises ConfigError when there is none."""
    path = Path(folder) / BOARD_FILE
    if not path.is_file():
        raise ConfigError(
            f"{folder} holds no leaderboard ({BOARD_FILE}); run `hub-merge compare --out "
            f"{folder} ...` first, or point at the folder it wrote."
        )
    try:
        return Leaderboard.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ConfigError(f"{path} is corrupt ({err}); run the compare again.") from err


@dataclass(frozen=True)
class RowModel:
    """What publishing a row means: the search run and node (or a MoE folder), and the card text."""

    row: str
    run: Path  # a search run folder, or the MoE's model folder
    node: str | None  # the node of that run (None for a MoE folder)
    section: str  # the leaderboard, as the card's section


def row_model(folder: str | Path, row: str | None = None) -> RowModel:
    """The model of ``row`` (default: the recommended row) and the card's leaderboard section.

    Raises:
        ConfigError: no such row, or a row with no model of its own (an expert, the oracle
            router, MoA), or no row could be recommended.
    """
    root = Path(folder)
    board = load_leaderboard(root)
    chosen = board.row(row) if row is not None else board.recommended()
    if chosen is None:
        raise ConfigError(f"No row of {root} can be recommended; name one with --row.")
    if chosen.kind in ("expert", "oracle", "moa"):
        why = {
            "expert": "it is one of the original experts, not a merge",
            "oracle": "the oracle router is a ceiling (each task sent to its own expert), no model",
            "moa": "MoA is several models called per query, not one model to publish",
        }[chosen.kind]
        raise ConfigError(f"Row {chosen.name!r} has no model to publish: {why}.")
    seed = chosen.best_seed()
    if seed.model is None:
        raise ConfigError(f"Row {chosen.name!r} wrote no model folder; nothing to publish.")
    how = "the recommended row" if row is None else f"the row named with --row ({chosen.name})"
    if row is not None and board.recommended() is not None:
        rec = board.recommended()
        if rec is not None and rec.name == chosen.name:
            how += ", which is also the recommended row"
    seeds = (
        f" (seed {seed.seed}, the best of {len(chosen.seeds)} on dev)"
        if len(chosen.seeds) > 1
        else ""
    )
    section = (
        "## Leaderboard\n\n"
        f"This model is the row **{chosen.label}**{seeds} of a `hub-merge compare` of "
        f"{len(board.rows)} rows on the same dev/test split; it was published as {how}. "
        f"{board.how_chosen()}\n\n{board.markdown()}"
    )
    if chosen.kind == "moe":
        return RowModel(chosen.name, root / seed.model, None, section)
    if seed.run is None or seed.node is None:
        raise ConfigError(f"Row {chosen.name!r} records no run; nothing to publish.")
    return RowModel(chosen.name, root / seed.run, seed.node, section)
