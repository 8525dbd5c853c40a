"""mergekit's ``slices:`` in the streaming engine: layers stacked and merged slice by slice.

An output slice takes the same number of layers from each of its sources (``layer_range``) and
merges them layer by layer with the recipe's method: one source under ``passthrough`` copies
layers (frankenmerges, depth up-scaling), several sources merge (``gradient-slerp.yml``). Output
layers are numbered in slice order from 0, and the config's layer count says how many there are.

The rules are mergekit's (``mergekit/plan.py``):

- a gradient is read at the layer's position *within its slice*, ``idx / (n - 1)`` (1 for a
  one-layer slice);
- parameters resolve per source first, then the slice's, then the global ones;
- tensors outside the layers are merged from the first slice's sources (embeddings) or the last
  slice's (final norm, head), read at position 0. Which is which: names holding ``embed``,
  ``wte`` or ``wpe`` are the embeddings, every other non-layer tensor comes after the layers.

The output's safetensors metadata records the recipe and, under ``hub_merge_layers``, which
output layers came from which model's layers (the card's lineage reads them).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, IncompatibleModelsError, MergeError
from ..layers import layer_index
from ..tensors import DEFAULT_SHARD_BYTES, ShardedWriter, is_adapter_folder
from .inputs import CheckpointSource
from .methods import TensorMerge, get_method, uses_base, validate_parameters
from .recipe import MergeRecipe, OutputSlice

LAYERS_KEY = "hub_merge_layers"
_PRE = ("embed", "wte", "wpe")
_LAYER_NUM = re.compile(r"((?:^|\.)(?:layers|h|blocks|layer|block)\.)(\d+)(\.)")
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


def _renumber(name: str, index: int) -> str:
    return _LAYER_NUM.sub(lambda m: f"{m.group(1)}{index}{m.group(3)}", name, count=1)


def _is_pre(name: str) -> bool:
    return any(p in name for p in _PRE)


def layer_lineage(recipe: MergeRecipe) -> list[dict[str, Any]]:
    """Which output layers came from which models' layers: one entry per slice."""
    out, start = [], 0
    for sl in recipe.slices or []:
        out.append(
            {
                "layers": [start, start + sl.n_layers],
                "sources": [{"model": s.model, "layers": list(s.layer_range)} for s in sl.sources],
            }
        )
        start += sl.n_layers
    return out


def output_layers(recipe: MergeRecipe) -> int:
    return sum(sl.n_layers for sl in recipe.slices or [])


class _Plan:
    """Every output tensor: its name, its inputs (model, input name), its slice and position."""

    def __init__(self, recipe: MergeRecipe, sources: dict[str, CheckpointSource]) -> None:
        self.recipe = recipe
        self.sources = sources
        slices = recipe.slices or []
        first, last = slices[0], slices[-1]
        ref = sources[first.sources[0].model]
        self.items: list[tuple[str, list[tuple[str, str]], OutputSlice, float]] = []
        outside = [n for n in ref.names if layer_index(n) is None]
        for name in (n for n in outside if _is_pre(n)):
            self.items.append((name, [(s.model, name) for s in first.sources], first, 0.0))
        out_layer = 0
        for i, sl in enumerate(slices):
            n = sl.n_layers
            for idx in range(n):
                t = idx / (n - 1) if n > 1 else 1.0
                templates = self._layer_names(
                    sl.sources[0].model, sl.sources[0].layer_range[0] + idx, f"slices[{i}]"
                )
                for name in templates:
                    inputs = []
                    for s in sl.sources:
                        in_name = _renumber(name, s.layer_range[0] + idx)
                        if in_name not in self.sources[s.model].names:
                            raise IncompatibleModelsError(
                                f"slices[{i}]: {s.model} has no {in_name!r}; its sources must "
                                "share one architecture."
                            )
                        inputs.append((s.model, in_name))
                    self.items.append((_renumber(name, out_layer), inputs, sl, t))
                out_layer += 1
        post_ref = sources[last.sources[0].model]
        for name in (n for n in post_ref.names if layer_index(n) is None and not _is_pre(n)):
            self.items.append((name, [(s.model, name) for s in last.sources], last, 0.0))

    def _layer_names(self, model: str, layer: int, where: str) -> list[str]:
        names = [n for n in self.sources[model].names if layer_index(n) == layer]
        if not names:
            raise ConfigError(
                f"{where}: {model} has no layer {layer} (layer_range is [start, stop) and "
                "counts from 0)."
            )
        return names


def _output_config(folder: Path, recipe: MergeRecipe, dtype: torch.dtype | None) -> bytes | None:
    path = folder / "config.json"
    if not path.is_file():
        return None
    cfg = json.loads(path.read_text())
    total = output_layers(recipe)
    for key in _LAYER_KEYS:
        if key in cfg:
            cfg[key] = total
    types = cfg.get("layer_types")
    if isinstance(types, list):  # each output layer keeps its source layer's kind
        cfg["layer_types"] = [
            types[min(s.sources[0].layer_range[0] + i, len(types) - 1)]
            for s in recipe.slices or []
            for i in range(s.n_layers)
        ]
    if dtype is not None:
        for key in ("torch_dtype", "dtype"):
            if key in cfg:
                cfg[key] = str(dtype).removeprefix("torch.")
    return json.dumps(cfg, indent=2).encode()


def slices_to_folder(
    recipe: MergeRecipe,
    out: str | Path,
    *,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Merge a sliced recipe into ``out`` (a model folder transformers loads), tensor by tensor.

    Raises:
        ConfigError: a source's ``layer_range`` is outside its model, a LoRA source, or the base
            of a method that takes one is not among a slice's sources.
        IncompatibleModelsError: sources of one slice differ in tensor names or shapes.
        MergeError: the write failed; nothing was left behind.
    """
    from .run import SIDE_FILES

    slices = recipe.slices or []
    method = get_method(recipe.method)
    takes_base = uses_base(method) and recipe.base is not None
    models: list[str] = []
    for sl in slices:
        for s in sl.sources:
            if s.model not in models:
                models.append(s.model)
    sources: dict[str, CheckpointSource] = {}
    for m in models:
        if not Path(m).is_dir():
            raise ConfigError(f"{m} is not a local folder; pull Hub models first.")
        if is_adapter_folder(Path(m)):
            raise ConfigError(f"{m} is a LoRA adapter: slices take full models; merge it first.")
        sources[m] = CheckpointSource(m)
    ops = []
    for i, sl in enumerate(slices):
        # positions in sl.sources: the base's (mergekit keys inputs by model, so the base is the
        # source that names it) and the merged ones
        base_at = next((j for j, s in enumerate(sl.sources) if s.model == recipe.base), None)
        base_at = base_at if takes_base else None
        merged = [s for j, s in enumerate(sl.sources) if j != base_at]
        if takes_base and base_at is None:
            raise ConfigError(
                f"slices[{i}]: method {recipe.method!r} merges onto base_model {recipe.base}, "
                "which is not one of the slice's sources (mergekit needs it there too)."
            )
        params = {**recipe.parameters, **sl.parameters}
        validate_parameters(
            method,
            params,
            [s.parameters for s in merged],
            n_inputs=len(merged),
            has_base=takes_base,
        )
        op = TensorMerge(
            method,
            dict(sl.parameters),  # the slice's first, then the config's (mergekit's order)
            [s.parameters for s in merged],
            outer_params=[recipe.parameters],
            seed=recipe.seed,
            compute_dtype=recipe.compute_torch_dtype(),
            exact_mergekit=recipe.exact_mergekit,
        )
        ops.append((sl, op, base_at))
    plan = _Plan(recipe, sources)
    config_dir = Path(recipe.base) if recipe.base else Path(models[0])
    vocab = None
    if recipe.tokenizer is not None:
        from .vocab import build_vocabulary

        inputs = list(dict.fromkeys(([recipe.base] if recipe.base else []) + models))
        vocab = build_vocabulary(recipe.tokenizer, recipe.base, inputs, str(config_dir))
    ref = sources[slices[0].sources[0].model]
    first_float = next((n for n in ref.names if ref.dtype(n).is_floating_point), None)
    in_dtype = ref.dtype(first_float) if first_float else torch.float32
    out_dtype = getattr(torch, recipe.dtype) if recipe.dtype else in_dtype
    layout = {}
    for name, inputs, _, _ in plan.items:
        src, in_name = inputs[0]
        shapes = {tuple(sources[m].shape(n)) for m, n in inputs}
        if vocab is not None and name in vocab.axes:  # one row per output token (vocab.py)
            shapes = {vocab.output_shape(name, next(iter(shapes)))}
        if len(shapes) != 1:
            raise IncompatibleModelsError(
                f"{name}: the slice's sources have different shapes {sorted(shapes)}."
            )
        dtype = sources[src].dtype(in_name)
        layout[name] = (
            next(iter(shapes)),
            out_dtype if dtype.is_floating_point else dtype,
        )
    for sl, op, _ in ops:  # every tensor's parameters, before a weight is read
        names = [n for n, _, s, _ in plan.items if s is sl]
        op.check(names)
    meta = {
        "hub_merge_recipe": recipe.canonical_json(),
        LAYERS_KEY: json.dumps(layer_lineage(recipe)),
    }
    try:
        writer = ShardedWriter(
            out, layout, max_shard_bytes=max_shard_bytes, metadata=meta, overwrite=overwrite
        )
    except FileExistsError as err:
        raise ConfigError(str(err)) from None
    by_slice = {id(sl): (op, base_at) for sl, op, base_at in ops}
    try:
        from .run import output_tokenizer
        from .vocab import TOKENIZER_FILES, set_config_value

        files, vocab_size = output_tokenizer(recipe, vocab, config_dir)
        for side in SIDE_FILES:
            path = config_dir / side
            if side == "config.json":
                data = _output_config(config_dir, recipe, out_dtype)
                if data is not None and vocab_size is not None:
                    cfg = json.loads(data)
                    set_config_value(cfg, *vocab_size)
                    data = json.dumps(cfg, indent=2).encode()
                if data is not None:
                    writer.add_file(side, data)
            elif path.is_file() and not (files is not None and side in TOKENIZER_FILES):
                writer.add_file(side, path.read_bytes())
        for side, data in (files or {}).items():
            writer.add_file(side, data)
        items = plan.items
        if progress:
            from tqdm.auto import tqdm

            items = tqdm(items, desc=f"merge slices ({recipe.method})", unit="tensor", leave=False)
        cast = recipe.compute_torch_dtype()
        with torch.no_grad():
            for name, inputs, sl, t in items:
                op, base_at = by_slice[id(sl)]
                tensors = [sources[m].get(n) for m, n in inputs]  # aligned with sl.sources
                if not tensors[0].is_floating_point():
                    writer.write(name, tensors[0])
                    continue
                if cast is not None:
                    tensors = [x.to(cast) for x in tensors]
                if vocab is not None and name in vocab.axes:  # mergekit's inputs: the sources
                    rows = vocab.permute(
                        name, {m: x for (m, _), x in zip(inputs, tensors, strict=True)}
                    )
                    tensors = [rows[m] for m, _ in inputs]
                base_t = tensors[base_at] if base_at is not None else None
                models_t = [x for j, x in enumerate(tensors) if j != base_at]
                writer.write(name, op(name, models_t, base_t, out_dtype=out_dtype, t=t))
        return writer.finalize()
    except OSError as err:
        writer.abort()
        raise MergeError(
            f"Writing the merge to {out} failed ({err}); nothing was left behind."
        ) from err
    except BaseException:
        writer.abort()
        raise
