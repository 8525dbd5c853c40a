"""The real search backend: the merge engine's in-memory session, kinship and the evaluator.

A candidate is rebuilt from its recipe tree (a merged node's tensors are a deterministic function
of it), so the pool never has to live in memory: only the last few state dicts are kept (an LRU
of ``keep_models``; a SmolLM2-135M node is ~540 MB in fp32) and anything older is merged again
from its parents when needed. Candidates are scored from memory and never written to disk.
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
from .greedy import Candidate, recipe_hash

StateDict = dict[str, torch.Tensor]
BASE = "@base"  # recipe placeholder for the search's common base model


class EngineBackend:
    """Implements :class:`~hub_merge.search.greedy.SearchBackend` over ``MergeSession``.

    Args:
        session: a ``hub_merge.merge.MergeSession`` on the search's base (holds it on the device).
        evaluator: scores an in-memory transformers model on the tasks.
        folders: recipe model string (an original's ``source``) -> local folder.
        kinship_metric: ``pearson``, ``cosine`` or ``euclidean``.
        keep_models: how many merged/loaded state dicts to keep in memory.
        seed: seed for random merge methods (DARE), so a recipe always gives the same tensors.
    """

    def __init__(
        self,
        session: Any,
        evaluator: Evaluator,
        folders: Mapping[str, str | Path],
        *,
        kinship_metric: str = "pearson",
        keep_models: int = 4,
        seed: int = 0,
    ) -> None:
        if keep_models < 1:
            raise ConfigError(f"keep_models must be at least 1; got {keep_models}.")
        self.session = session
        self.evaluator = evaluator
        self.folders = {k: Path(v) for k, v in folders.items()}
        self.kinship_metric = kinship_metric
        self.keep_models = keep_models
        self.seed = seed
        self._lru: OrderedDict[str, StateDict] = OrderedDict()
        self.merges = 0

    # -- tensors -----------------------------------------------------------------------------

    def _folder(self, source: str) -> Path:
        try:
            return self.folders[source]
        except KeyError:
            raise ConfigError(
                f"Recipe names {source!r}, which is not one of the search's models."
            ) from None

    def _remember(self, key: str, state: StateDict) -> StateDict:
        self._lru[key] = state
        self._lru.move_to_end(key)
        while len(self._lru) > self.keep_models:
            self._lru.popitem(last=False)
        return state

    def state(self, recipe: dict[str, Any]) -> StateDict:
        """The full state dict of a recipe tree, from the LRU or rebuilt from its parents."""
        key = recipe_hash(recipe)
        if key in self._lru:
            self._lru.move_to_end(key)
            return self._lru[key]
        if "model" in recipe:
            handle = self.session.load(self._folder(recipe["model"]), label=recipe["model"])
            if handle.state is not None:
                state = handle.state
            else:  # a LoRA adapter: base + scale * B @ A, one tensor at a time
                state = {
                    n: handle.tensor(n, self.session.device).to(self.session.dtype)
                    if self.session.base.state[n].is_floating_point()
                    else handle.tensor(n, self.session.device)
                    for n in self.session.names
                }
            return self._remember(key, state)
        base: Any = "session" if recipe["base"] == BASE else self.state(recipe["base"])
        models = [self.state(m) for m in recipe["models"]]
        state = self.session.merge(
            recipe["method"], models, recipe.get("parameters") or {}, base=base, seed=self.seed
        )
        self.merges += 1
        return self._remember(key, state)

    def _kinship_input(self, recipe: dict[str, Any]) -> Any:
        # Originals are read from disk (adapters stay factored, the cheap path); merges from memory.
        if "model" in recipe:
            return str(self._folder(recipe["model"]))
        return self.state(recipe)

    # -- SearchBackend -----------------------------------------------------------------------

    def evaluate(self, candidate: Candidate) -> dict[str, float]:
        model = self.session.to_model(self.state(candidate.recipe))
        return self.evaluator.score(model)

    def kinship(self, a: Candidate, b: Candidate) -> float:
        return self.kinship_many(a, [b])[0]

    def kinship_many(self, anchor: Candidate, others: list[Candidate]) -> list[float]:
        """The anchor's kinship to each of ``others``, several per pass over the weights.

        Originals (on disk, adapters factored) cost no memory and all join the first pass;
        merged nodes are held in memory while measured, so at most ``keep_models - 1`` of them
        share a pass, keeping peak memory near the LRU's.
        """
        from ..kinship import kinship_matrix

        on_disk = [c for c in others if "model" in c.recipe]
        in_memory = [c for c in others if "model" not in c.recipe]
        per_pass = max(1, self.keep_models - 1)
        passes = [on_disk + in_memory[:per_pass]]
        passes += [in_memory[i : i + per_pass] for i in range(per_pass, len(in_memory), per_pass)]
        values: dict[str, float] = {}
        for group in passes:
            if not group:
                continue
            result = kinship_matrix(
                [self._kinship_input(anchor.recipe)]
                + [self._kinship_input(c.recipe) for c in group],
                self.session.base.state,
                self.kinship_metric,
                names=[anchor.id] + [c.id for c in group],
                device=self.session.device,
            )
            for i, c in enumerate(group, start=1):
                values[c.id] = float(result.pair(0, i))
        return [values[c.id] for c in others]

    # -- output ------------------------------------------------------------------------------

    def materialize(self, recipe: dict[str, Any], out: str | Path) -> Path:
        """Write a node as a model folder (an original is copied, an adapter stays an adapter)."""
        out = Path(out)
        if "model" in recipe:
            tmp = out.with_name(out.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(
                self._folder(recipe["model"]), tmp, ignore=shutil.ignore_patterns(".cache", ".git*")
            )
            shutil.rmtree(out, ignore_errors=True)
            tmp.replace(out)
            return out
        return Path(self.session.save(self.state(recipe), out))
