"""The real search backend: the merge engine's in-memory session, kinship and the evaluator.

A candidate is rebuilt from its recipe (a merged node's tensors are a deterministic function of
it), so the pool never has to live in memory: adapters are loaded once (factored), only the last
few full state dicts are kept (an LRU bounded by ``max_memory`` bytes and/or ``keep_models``
entries; a SmolLM2-135M node is ~540 MB in fp32) and anything older is merged again from its
inputs when needed. Candidates are scored from memory and never written to disk.

Scoring goes through one model kept on the device (:class:`~hub_merge.merge.inplace.InPlaceModel`):
an affine candidate (the uniform average, task arithmetic, swarm particles, a single expert) is
written into it in place, only where it differs from the base, and undone exactly after
scoring; any other candidate (SLERP, TIES, DARE, merges of merges) is merged as a state dict and
copied in, then undone the same way. The recipe decides which, the scores are the same.
"""

from __future__ import annotations

import shutil
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..evaluate import Evaluator
from ..merge.recipe import MergeRecipe
from ..merge.registry import MergeInputs, method_for
from ..rss import return_freed_memory

StateDict = dict[str, torch.Tensor]


class EngineBackend:
    """Implements :class:`~hub_merge.search.core.SearchBackend` over ``MergeSession``.

    Args:
        session: a ``hub_merge.merge.MergeSession`` on the search's base (holds it on the device).
        evaluator: scores an in-memory transformers model on the dev rows (the fitness).
        folders: recipe model string (an expert's ``source``) -> local folder.
        base_source: the recipe string of the session's base (a task-vector merge's ``base``).
        kinship_metric: ``pearson``, ``cosine`` or ``euclidean``.
        keep_models: at most this many state dicts in the cache (default 4 when no
            ``max_memory`` is given).
        max_memory: bytes the cache of state dicts may hold (merged nodes and full experts;
            ``hub_merge.search.memory.default_max_memory`` picks a share of free memory).
        test_evaluator: scores the held-out test rows (reported, never the fitness).
    """

    def __init__(
        self,
        session: Any,
        evaluator: Evaluator,
        folders: Mapping[str, str | Path],
        *,
        base_source: str = "@base",
        kinship_metric: str = "pearson",
        keep_models: int | None = None,
        max_memory: int | None = None,
        test_evaluator: Evaluator | None = None,
    ) -> None:
        if keep_models is not None and keep_models < 1:
            raise ConfigError(f"keep_models must be at least 1; got {keep_models}.")
        if max_memory is not None and max_memory < 0:
            raise ConfigError(f"max_memory must be a number of bytes >= 0; got {max_memory}.")
        if keep_models is None and max_memory is None:
            keep_models = 4
        self.session = session
        self.evaluator = evaluator
        self.test_evaluator = test_evaluator
        self.folders = {k: Path(v) for k, v in folders.items()}
        self.base_source = base_source
        self.kinship_metric = kinship_metric
        self.keep_models = keep_models
        self.max_memory = max_memory
        self._lru: OrderedDict[str, StateDict] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self.cached_bytes = 0
        self.peak_cached_bytes = 0
        self._adapters: dict[str, Any] = {}  # source -> factored adapter handle, loaded once
        self.merges = 0  # full state dicts merged
        self.lazy_merges = 0  # nested recipes given to a merge lazily (merged tensor by tensor)
        self._inplace: Any = None  # the one scoring model, candidates applied in place
        self.in_place = 0  # candidates scored without building a state dict

    # -- tensors -----------------------------------------------------------------------------

    def _folder(self, source: str) -> Path:
        try:
            return self.folders[source]
        except KeyError:
            raise ConfigError(
                f"Recipe names {source!r}, which is not one of the search's models."
            ) from None

    @property
    def model_bytes(self) -> int:
        """Bytes of one full state dict (the base's)."""
        return sum(t.numel() * t.element_size() for t in self.session.base.state.values()) or 1

    @property
    def slots(self) -> int:
        """How many full state dicts the cache holds at most (kinship groups use it too)."""
        by_bytes = None if self.max_memory is None else self.max_memory // self.model_bytes
        counts = [c for c in (self.keep_models, by_bytes) if c is not None]
        return max(1, min(counts))

    def _own_bytes(self, state: StateDict) -> int:
        # tensors shared with the base (an adapter mix's untouched modules) cost nothing
        base = {t.data_ptr() for t in self.session.base.state.values()}
        return sum(t.numel() * t.element_size() for t in state.values() if t.data_ptr() not in base)

    def _evict(self, room: int = 0) -> None:
        """Drop least-recently used states until ``room`` more bytes fit in the budget."""
        dropped = False
        while self._lru and (
            (self.keep_models is not None and len(self._lru) >= self.keep_models)
            or (self.max_memory is not None and self.cached_bytes + room > self.max_memory)
        ):
            key, _ = self._lru.popitem(last=False)
            self.cached_bytes -= self._sizes.pop(key, 0)
            dropped = True
        if dropped:
            return_freed_memory()  # else the heap keeps the evicted tensors' pages resident

    def _remember(self, key: str, state: StateDict) -> StateDict:
        if key in self._lru:
            self._lru.move_to_end(key)
            return state
        size = self._own_bytes(state)
        self._evict(size)
        self._lru[key] = state
        self._sizes[key] = size
        self.cached_bytes += size
        self.peak_cached_bytes = max(self.peak_cached_bytes, self.cached_bytes)
        return state

    def _make_room(self) -> None:
        """Before building a state dict (its inputs already in hand): free its slot first."""
        self._evict(self.model_bytes)

    def _expert(self, source: str) -> Any:
        """An expert: a full state dict on the device (in the LRU), or a factored adapter."""
        if source in self._adapters:
            return self._adapters[source]
        key = f"expert:{source}"
        if key in self._lru:
            self._lru.move_to_end(key)
            return self._lru[key]
        handle = self.session.load(self._folder(source), label=source)
        if handle.state is None:
            self._adapters[source] = handle
            return handle
        return self._remember(key, handle.state)

    def _input(self, item: str | MergeRecipe) -> Any:
        """A merge input as the session takes it: 'session' (the base), a handle or a state.

        A nested recipe not in the cache is given lazily when its method allows (each tensor
        merged when read): a child of two merged parents then holds its own state dict only,
        not both parents' as well (on the smol zoo, greedy's second generation held three
        0.54 GB state dicts at once).
        """
        if isinstance(item, MergeRecipe):
            key = item.recipe_hash()
            if key in self._lru:
                self._lru.move_to_end(key)
                return self._lru[key]
            inputs = MergeInputs(self.session, folders=self.folders, resolve=self._input)
            lazy = method_for(item.method).lazy(item, inputs)
            if lazy is None:
                return self.state(item)
            self.lazy_merges += 1
            return lazy
        if item == self.base_source:
            return "session"
        return self._expert(item)

    def state(self, recipe: MergeRecipe) -> StateDict:
        """The full state dict of a recipe, from the LRU or rebuilt from its inputs."""
        if recipe.is_leaf:
            handle = self._expert(recipe.models[0].model)  # type: ignore[arg-type]
            if isinstance(handle, dict):
                return handle
            key = recipe.recipe_hash()
            if key in self._lru:
                self._lru.move_to_end(key)
                return self._lru[key]
            dtype = self.session.dtype
            self._make_room()
            state = {  # a LoRA adapter: base + scale * B @ A, one tensor at a time
                n: handle.tensor(n, self.session.device).to(dtype)
                if self.session.base.state[n].is_floating_point()
                else handle.tensor(n, self.session.device)
                for n in self.session.names
            }
            return self._remember(key, state)
        key = recipe.recipe_hash()
        if key in self._lru:
            self._lru.move_to_end(key)
            return self._lru[key]
        # the method's registry entry merges it: inputs through this cache, room made first
        inputs = MergeInputs(
            self.session, folders=self.folders, resolve=self._input, make_room=self._make_room
        )
        state = method_for(recipe.method).state_dict(recipe, inputs)
        self.merges += 1
        return_freed_memory()  # the merge's temporaries (a lazy parent's tensors, a kernel's)
        return self._remember(key, state)

    def _kinship_input(self, recipe: MergeRecipe) -> Any:
        # Experts are read from disk (adapters stay factored, the cheap path); merges from the
        # cache, or merged tensor by tensor as the pass reads them (no state dict is built: two
        # merged nodes measured against each other held two 0.54 GB state dicts on the smol zoo)
        if recipe.is_leaf:
            return str(self._folder(recipe.models[0].model))  # type: ignore[arg-type]
        lazy = self._input(recipe)
        if isinstance(lazy, dict):
            return lazy
        from ..kinship import ComputedSource

        return ComputedSource(lazy.source)

    # -- SearchBackend -----------------------------------------------------------------------

    def _handle(self, source: str) -> Any:
        """An expert as a ``ModelHandle`` for the in-place model (no copy of a loaded state)."""
        found = self._expert(source)
        return self.session.load(found, label=source) if isinstance(found, dict) else found

    def _scoring(self, recipe: MergeRecipe) -> Any:
        """The scoring model with ``recipe`` on it, as a context manager (base again after).

        Affine candidates (experts, the uniform average, task arithmetic, factor mixes: every
        swarm particle) are written into the model in place, only the modules they change
        (``hub_merge.merge.inplace``); anything else is merged into a state dict and loaded.
        """
        if self._inplace is None:
            from ..merge.inplace import InPlaceModel

            self._inplace = InPlaceModel(
                self.session, load=self._handle, base_source=self.base_source
            )
        plan = self._inplace.plan(recipe)
        if plan is not None:
            self.in_place += 1
            return self._inplace.applied(plan)
        return self._inplace.loaded(self.state(recipe))

    def evaluate(self, recipe: MergeRecipe) -> dict[str, float]:
        with self._scoring(recipe) as model:
            scores = self.evaluator.score(model)
        return_freed_memory()  # the forward passes' activations, before the next merge
        return scores

    @property
    def has_test(self) -> bool:
        return self.test_evaluator is not None

    def evaluate_test(self, recipe: MergeRecipe) -> dict[str, float]:
        if self.test_evaluator is None:
            raise ConfigError("This search has no test rows.")
        with self._scoring(recipe) as model:
            scores = self.test_evaluator.score(model)
        return_freed_memory()
        return scores

    def kinship(self, a: MergeRecipe, b: MergeRecipe) -> float:
        return self.kinship_many(a, [b])[0]

    def kinship_many(self, anchor: MergeRecipe, others: list[MergeRecipe]) -> list[float]:
        """The anchor's kinship to each of ``others``, several per pass over the weights.

        Experts (on disk, adapters factored) cost no memory and all join the first pass;
        merged nodes are held in memory while measured, so at most ``slots - 1`` of them
        share a pass, keeping peak memory near the cache's budget.
        """
        from ..kinship import kinship_matrix

        on_disk = [c for c in others if c.is_leaf]
        in_memory = [c for c in others if not c.is_leaf]
        per_pass = max(1, self.slots - 1)
        passes = [on_disk + in_memory[:per_pass]]
        passes += [in_memory[i : i + per_pass] for i in range(per_pass, len(in_memory), per_pass)]
        values: dict[str, float] = {}
        for group in passes:
            if not group:
                continue
            names = ["anchor"] + [f"c{i}" for i in range(len(group))]
            result = kinship_matrix(
                [self._kinship_input(anchor)] + [self._kinship_input(c) for c in group],
                self.session.base.state,
                self.kinship_metric,
                names=names,
                device=self.session.device,
            )
            for i, c in enumerate(group, start=1):
                values[c.recipe_hash()] = float(result.pair(0, i))
        return_freed_memory()  # the pass's merged tensors
        return [values[c.recipe_hash()] for c in others]

    def release(self) -> None:
        """Drop every state dict, adapter and the scoring model this backend holds.

        ``hub-merge compare`` runs each strategy over one backend; between them it releases,
        so what a finished strategy merged (its cached nodes, the scoring model with its last
        candidate) is not held while the next one trains. Everything is rebuilt on demand: a
        cache miss re-merges a node from its inputs.
        """
        self._lru.clear()
        self._sizes.clear()
        self.cached_bytes = 0
        self._adapters.clear()
        self._inplace = None
        self.session.release_model()
        return_freed_memory()

    # -- output ------------------------------------------------------------------------------

    def materialize(self, recipe: MergeRecipe, out: str | Path) -> Path:
        """Write a candidate as a model folder (an expert is copied, an adapter stays one)."""
        out = Path(out)
        if recipe.is_leaf:
            tmp = out.with_name(out.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(
                self._folder(recipe.models[0].model),  # type: ignore[arg-type]
                tmp,
                ignore=shutil.ignore_patterns(".cache", ".git*"),
            )
            shutil.rmtree(out, ignore_errors=True)
            tmp.replace(out)
            return out
        entry = method_for(recipe.method)
        if not entry.writes_state:  # e.g. an adapter, or a model with its coefficient file
            self._make_room()  # it merges from its own inputs: room for its result, as state()
            return entry.write(
                recipe,
                out,
                folders=self.folders,
                base_folder=self.session.base_path,
                device=self.session.device,
                options={"base_state": self.session.base.state},  # not a second copy of it
            )
        return Path(self.session.save(self.state(recipe), out))
