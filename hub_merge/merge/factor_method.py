"""The ``lora_factor_sum`` method's entry: LoRA adapters mixed factor by factor (Model Swarms).

Its recipe (one numeric ``weight`` per adapter, a ``base``) and its registry entry live here; the
arithmetic (:class:`~.adapter_mix.FactorMix`, which loads adapters and imports torch) is loaded
when a mix is first merged, so reading the entry (the card, the CLI) stays light.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .recipe import MergeRecipe, ModelEntry
from .registry import CardWords, MergeInputs, MergeMethod, StateDict, register_method

if TYPE_CHECKING:
    from .inplace import InPlaceModel, InPlacePlan

FACTOR_METHOD = "lora_factor_sum"


def is_factor_recipe(recipe: MergeRecipe) -> bool:
    """Whether ``recipe`` is a factor mix (kept for callers; the engine asks the registry)."""
    return recipe.method == FACTOR_METHOD


def factor_recipe(base: str, adapters: Sequence[str], weights: Sequence[float]) -> MergeRecipe:
    """The recipe of the factor-wise mix of ``adapters`` (recipe strings) with ``weights``."""
    return MergeRecipe(
        method=FACTOR_METHOD,
        base=base,
        models=[
            ModelEntry(model=a, parameters={"weight": float(w)})
            for a, w in zip(adapters, weights, strict=True)
        ],
    )


def factor_weights(recipe: MergeRecipe) -> list[float]:
    """The per-adapter weights of a ``lora_factor_sum`` recipe, after checking its shape."""
    if recipe.base is None:
        raise ConfigError(f"Method {FACTOR_METHOD!r} needs `base:` (the adapters' base model).")
    if recipe.parameters:
        raise ConfigError(
            f"Method {FACTOR_METHOD!r} takes only a per-model `weight`; remove "
            f"{', '.join(sorted(recipe.parameters))} from `parameters`."
        )
    weights = []
    for i, e in enumerate(recipe.models):
        extra = sorted(set(e.parameters) - {"weight"})
        if extra or "weight" not in e.parameters:
            raise ConfigError(
                f"Method {FACTOR_METHOD!r} needs exactly a numeric `weight` for every model; "
                f"models[{i}] has {sorted(e.parameters)}."
            )
        w = e.parameters["weight"]
        if isinstance(w, bool) or not isinstance(w, (int, float)):
            raise ConfigError(
                f"Method {FACTOR_METHOD!r}: models[{i}].weight must be a number (no gradients or "
                f"filters: a factor mix has one weight per adapter); got {w!r}."
            )
        weights.append(float(w))
    return weights


def _cached_mix(cache: dict[str, Any], key: tuple[str, ...], build: Any) -> Any:
    """One adapter set's loaded factors per holder (a search has one set), built on first use."""
    held = cache.get(FACTOR_METHOD)
    if held is not None and held[0] == key:
        return held[1]
    mix = build()
    cache[FACTOR_METHOD] = (key, mix)
    return mix


@register_method
class FactorMethod(MergeMethod):
    """``lora_factor_sum``: ``A = Σ w_j A_j``, ``B = Σ w_j s_j B_j``; the result is an adapter."""

    name = FACTOR_METHOD
    tool = "hub-merge"
    own_inputs = True  # the step mixes the adapters themselves, not mergekit's base+adapter
    writes_state = False  # its output is a peft adapter folder
    words = CardWords(
        "LoRA factor mix",
        "mixes LoRA adapters factor by factor (A = Σ w·A_j, B = Σ w·B_j), as Model Swarms moves "
        "LoRA experts; the result is itself an adapter",
        "https://arxiv.org/abs/2410.11163",
    )

    def check(self, recipe: MergeRecipe) -> None:
        """A base, and one numeric weight per adapter; the adapters themselves are read later."""
        factor_weights(recipe)
        if any(not isinstance(e.model, str) for e in recipe.models):
            raise ConfigError(f"Method {FACTOR_METHOD!r} mixes adapters, not other recipes.")

    def state_dict(self, recipe: MergeRecipe, inputs: MergeInputs) -> StateDict:
        """``W_base + (Σ w B_j)(Σ w A_j)``; the adapters' factors are read once per session."""
        from .adapter_mix import open_factor_recipe

        session = inputs.session
        folders = inputs.folders or {}
        inputs.room()
        key = tuple(str(folders.get(e.model, e.model)) for e in recipe.models)

        def build() -> Any:
            mix, _ = open_factor_recipe(recipe, inputs.folders, device=session.device)
            mix.check_base({n: t.shape for n, t in session.base.state.items()})
            return mix

        mix = _cached_mix(session.method_cache, key, build)
        return mix.apply(session.base.state, factor_weights(recipe))

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
        from .adapter_mix import write_factor_recipe

        return write_factor_recipe(
            recipe, out, folders=folders, base_folder=base_folder, overwrite=overwrite
        )

    def in_place(self, model: InPlaceModel, recipe: MergeRecipe) -> InPlacePlan | None:
        """The mix's low-rank deltas written into the scoring model (every swarm particle)."""
        from .adapter_mix import FactorMix
        from .inplace import InPlacePlan, InPlaceTerm

        try:
            weights = factor_weights(recipe)
        except ConfigError:
            return None
        terms = [InPlaceTerm(str(e.model), model.handle(str(e.model))) for e in recipe.models]
        if not all(t.handle.is_adapter for t in terms):
            return None
        key = tuple(t.source for t in terms)
        session = model.session

        def build() -> Any:
            readers = [t.handle.source.adapter for t in terms]  # type: ignore[attr-defined]
            mix = FactorMix(readers, device=session.device, labels=list(key))
            mix.check_base({n: t.shape for n, t in session.base.state.items()})
            return mix

        return InPlacePlan(
            recipe,
            terms,
            mix_weights=weights,
            mix=lambda: _cached_mix(model.method_cache, key, build),
            why="factor mix",
        )
