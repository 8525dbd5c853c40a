"""Merge methods as registered entries: how each one merges, writes, applies in place, is described.

mergekit's methods are one family (:class:`MergekitMethod`, the entry of every name nobody
registered). hub-merge's own methods register an entry from their own module with
:func:`register_method`: the LoRA factor mix in :mod:`.factor_method`, DAM in
``hub_merge.dam.method``. The streaming run, the in-memory session, the in-place scorer, the
search backend and the card ask :func:`method_for`; none of them names a method, and this package
never imports the packages that register methods above it (DAM registers itself when
``hub_merge`` is imported). Adding a learned method is then one file.

This module is light (no torch, no mergekit): the card and the CLI read entries without loading
the engine; each entry imports what it runs when it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

if TYPE_CHECKING:
    from .inplace import InPlaceModel, InPlacePlan
    from .memory import MergeSession
    from .recipe import MergeRecipe

StateDict = dict[str, Any]  # tensor name -> torch.Tensor


@dataclass
class MergeInputs:
    """What an in-memory merge needs from its caller besides the recipe.

    Args:
        session: the ``MergeSession`` holding the base on the device (its device and dtype).
        folders: recipe model string -> local folder (default: the strings are folders).
        resolve: a recipe input (a model string or a nested recipe) -> what ``session.merge``
            takes (``"session"`` for the base, a handle or a state dict); a search backend
            resolves through its cache. Default: the session loads the string.
        resolve_base: the same for the recipe's ``base`` (default: ``resolve``); the session
            maps its own base folder to ``"session"``.
        make_room: called once the inputs are in hand, before the result is built (a cache
            frees the result's slot first).
    """

    session: MergeSession
    folders: Mapping[str, str | Path] | None = None
    resolve: Callable[[Any], Any] | None = None
    resolve_base: Callable[[Any], Any] | None = None
    make_room: Callable[[], None] | None = None

    def room(self) -> None:
        if self.make_room is not None:
            self.make_room()


@dataclass(frozen=True)
class CardWords:
    """How a card names a method: a title, what it does in plain words, and its paper."""

    title: str
    plain: str
    paper: str | None = None


class MergeMethod:
    """One merge method's entry. Subclasses override what differs from mergekit's family.

    Class attributes:
        name: the recipe's ``method`` (empty for the mergekit family, which has every name).
        tool: what runs one published step: ``"mergekit"`` (its YAML) or ``"hub-merge"``.
        own_inputs: a published step names the original models themselves (an adapter is an
            input on its own), not mergekit's ``base+adapter``.
        writes_state: its output folder is the merged state dict with the base's config; when
            False, :meth:`write` makes something else (an adapter, a coefficient file beside the
            model) and a search writes its winner through it.
        words: the card's description of the method (None: the card's table of mergekit words).
    """

    name: ClassVar[str] = ""
    tool: ClassVar[str] = "mergekit"
    own_inputs: ClassVar[bool] = False
    writes_state: ClassVar[bool] = True
    words: ClassVar[CardWords | None] = None

    def check(self, recipe: MergeRecipe) -> None:
        """Refuse a malformed step before any I/O (ConfigError / UnknownMethodError, one line)."""

    def state_dict(self, recipe: MergeRecipe, inputs: MergeInputs) -> StateDict:
        """The merged model as a state dict on the session's device, in the session's dtype."""
        raise NotImplementedError

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
        """Write the merge as a folder, atomically (``options``: the streaming run's extras; a
        search backend passes ``base_state``, the base it holds in memory, for a method that
        would otherwise read the base again)."""
        raise NotImplementedError

    def in_place(self, model: InPlaceModel, recipe: MergeRecipe) -> InPlacePlan | None:
        """How to write the merge into the scoring model in place; None: the merge path."""
        return None

    def lazy(self, recipe: MergeRecipe, inputs: MergeInputs) -> Any:
        """The merge as an input whose tensors are computed when read (a ``ModelHandle``), for
        a recipe nested in another; None: the caller builds the full state dict instead."""
        return None

    def card_step(self, recipe: MergeRecipe) -> dict[str, str]:
        """A published step's config for its tool (the card's reproduce block)."""
        if self.tool == "mergekit":
            return {"mergekit_yaml": recipe.to_mergekit_yaml()}
        return {"mergekit_yaml": recipe.to_yaml(), "tool": self.tool}

    def published_files(self, parameters: Mapping[str, Any]) -> dict[str, str]:
        """Run-folder paths in a step's parameters -> their file names in a published repo."""
        return {}

    def card_context(self, parameters: Mapping[str, Any] | None) -> dict[str, Any]:
        """Extra template variables of a card whose model this method made."""
        return {}


class MergekitMethod(MergeMethod):
    """mergekit's methods (``linear``, ``slerp``, ``ties``...): its arithmetic, its contracts."""

    def check(self, recipe: MergeRecipe) -> None:
        """The method exists and its parameters fit its input contract (mergekit's own)."""
        from .methods import get_method, uses_base, validate_parameters

        method = get_method(recipe.method)
        for params, model_params in recipe.merge_groups(uses_base(method)):  # one per slice
            validate_parameters(
                method,
                params,
                model_params,
                n_inputs=len(model_params),
                has_base=recipe.base is not None,
            )

    def state_dict(self, recipe: MergeRecipe, inputs: MergeInputs) -> StateDict:
        session = inputs.session
        resolve = inputs.resolve or (lambda ref: ref)
        resolve_base = inputs.resolve_base or resolve
        base = None if recipe.base is None else resolve_base(recipe.base)
        models = [resolve(e.model) for e in recipe.models]
        inputs.room()
        return session.merge(
            recipe.method,
            models,
            recipe.parameters,
            base=base,
            model_parameters=[e.parameters for e in recipe.models],
            seed=recipe.seed,
            exact_mergekit=recipe.exact_mergekit,
        )

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
        from .run import stream_to_folder

        return stream_to_folder(recipe, out, device=device, overwrite=overwrite, **(options or {}))

    def in_place(self, model: InPlaceModel, recipe: MergeRecipe) -> InPlacePlan | None:
        return model.affine_plan(recipe) or model.kernel_plan(recipe)

    def lazy(self, recipe: MergeRecipe, inputs: MergeInputs) -> Any:
        """Per tensor, as :meth:`state_dict` merges: a parent costs no full state dict."""
        if recipe.slices:
            return None
        session = inputs.session
        resolve = inputs.resolve or (lambda ref: ref)
        resolve_base = inputs.resolve_base or resolve
        return session.merge_lazily(
            recipe.method,
            [resolve(e.model) for e in recipe.models],
            recipe.parameters,
            base=None if recipe.base is None else resolve_base(recipe.base),
            model_parameters=[e.parameters for e in recipe.models],
            seed=recipe.seed,
            exact_mergekit=recipe.exact_mergekit,
        )


MERGEKIT = MergekitMethod()
_REGISTRY: dict[str, MergeMethod] = {}

M = TypeVar("M", bound=type[MergeMethod])


def register_method(cls: M) -> M:
    """Class decorator: register one instance of ``cls`` under ``cls.name`` (a name once)."""
    name = cls.name
    if not name:
        raise ValueError(f"{cls.__name__} needs a `name` to be registered.")
    have = _REGISTRY.get(name)
    if have is not None and type(have).__qualname__ != cls.__qualname__:
        raise ValueError(f"Merge method {name!r} is already registered by {type(have).__name__}.")
    _REGISTRY[name] = cls()
    return cls


def unregister_method(name: str) -> None:
    """Forget a registered method (its recipes then fall back to mergekit's family)."""
    _REGISTRY.pop(name, None)


def method_for(method: str) -> MergeMethod:
    """The entry of a recipe's ``method``: a registered one, else mergekit's family."""
    return _REGISTRY.get(method, MERGEKIT)


def registered_methods() -> dict[str, MergeMethod]:
    """hub-merge's own methods by name (mergekit's are listed by ``available_methods``)."""
    return dict(_REGISTRY)


__all__ = [
    "MERGEKIT",
    "CardWords",
    "MergeInputs",
    "MergeMethod",
    "MergekitMethod",
    "method_for",
    "register_method",
    "registered_methods",
    "unregister_method",
]
