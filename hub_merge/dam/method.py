"""DAM's entry in the merge registry: how the engine, the search and the card handle ``dam`` recipes.

The merge package never imports DAM: this module registers the method when ``hub_merge`` is
imported (``hub_merge/__init__`` imports it), so any recipe a user or a run folder can hand the
engine finds its entry. It stays light (no torch): the work is imported when a merge runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..merge.recipe import MergeRecipe
from ..merge.registry import CardWords, MergeInputs, MergeMethod, StateDict, register_method
from .recipe import DAM_METHOD
from .settings import PAPER_URL

PUBLISHED_FILE = "dam_coefficients.safetensors"  # the coefficients' name in a published repo
CARD_FACTS = ("steps", "lr", "train_batch_size", "temperature")


@register_method
class DamMethod(MergeMethod):
    """``dam``: learned per-column coefficients, rebuilt from their (digest-checked) file."""

    name = DAM_METHOD
    tool = "hub-merge"
    own_inputs = True  # the step names the experts themselves, as the coefficient file does
    writes_state = False  # the folder also holds the coefficient file and their picture
    words = CardWords(
        "DAM",
        "learns one coefficient per input column of every linear layer for each model, by "
        "gradient descent so the merge imitates each model on its own prompts (the models' "
        "weights stay unchanged)",
        PAPER_URL,
    )

    def check(self, recipe: MergeRecipe) -> None:
        """A coefficient file and its digest, and models (not recipes) as inputs; the file is
        read (and its digest checked) when the merge runs."""
        params = recipe.parameters
        if not isinstance(params.get("coefficients"), str) or not isinstance(
            params.get("sha256"), str
        ):
            raise ConfigError(
                "A `dam` recipe needs parameters `coefficients` (the coefficient file) and "
                "`sha256`."
            )
        if any(not isinstance(e.model, str) for e in recipe.models):
            raise ConfigError("A `dam` recipe merges models, not other recipes.")

    def state_dict(self, recipe: MergeRecipe, inputs: MergeInputs) -> StateDict:
        from .recipe import dam_state_dict

        session = inputs.session
        folders = _with_base(recipe, inputs.folders, session.base_path)
        # the session's base is shared, not read again: one base per process
        state = dam_state_dict(
            recipe, folders, device=session.device, base_state=session.base.state
        )
        return {n: t.to(session.dtype) if t.is_floating_point() else t for n, t in state.items()}

    def write(
        self,
        recipe: MergeRecipe,
        out: str | Path,
        *,
        folders: Mapping[str, str | Path] | None = None,
        base_folder: str | Path | None = None,
        device: Any = "auto",
        overwrite: bool = False,
        options: Mapping[str, Any] | None = None,
    ) -> Path:
        from .recipe import dam_to_folder

        folders = _with_base(recipe, folders, base_folder)
        base_state = (options or {}).get("base_state")  # a search backend's base in memory
        return dam_to_folder(
            recipe, out, folders, device=device, overwrite=overwrite, base_state=base_state
        )

    def published_files(self, parameters: Mapping[str, Any]) -> dict[str, str]:
        """The run's coefficient file is ``dam_coefficients.safetensors`` in a published repo."""
        path = parameters.get("coefficients")
        return {path: PUBLISHED_FILE} if isinstance(path, str) else {}

    def card_context(self, parameters: Mapping[str, Any] | None) -> dict[str, Any]:
        """The card's DAM section: the training's facts and the coefficient file's digest."""
        params = dict(parameters or {})
        facts = {k: params.get(k) for k in CARD_FACTS}
        return {"dam": facts | {"sha256": str(params.get("sha256", ""))}}


def _with_base(
    recipe: MergeRecipe,
    folders: Mapping[str, str | Path] | None,
    base_folder: str | Path | None,
) -> dict[str, str | Path]:
    """``folders`` with the recipe's base mapped to the base's local folder.

    A search's folders map the experts' sources only; a base named by Hub reference
    (``org/base@sha``, as the demo and the Space give it) would otherwise be read as a folder.
    """
    out = dict(folders or {})
    if isinstance(recipe.base, str) and base_folder is not None:
        out.setdefault(recipe.base, base_folder)
    return out
