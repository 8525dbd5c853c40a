"""Which transformer block a tensor belongs to: the one layer-index parser of hub-merge.

SLERP/gradient merges interpolate a setting across blocks (mergekit's ``t = i / (n - 1)``),
kinship breaks its matrix down per block, and the card reports both, so all three must agree on
what "layer 7" of a tensor name is. Architectures spell the block list differently:

- ``model.layers.N.`` (Llama, Mistral, Qwen, Gemma, Phi, OPT's ``decoder.layers.N``),
- ``h.N.`` (GPT-2, GPT-J, Falcon, Bloom; ``transformer.h.N`` or bare ``h.N`` when saved without
  the ``transformer.`` prefix),
- ``blocks.N.`` (MPT), ``layer.N.`` (BERT's ``encoder.layer.N``), ``block.N.`` (T5).

The first match from the left wins, so T5's ``block.0.layer.1`` is block 0. Hand-written because
neither transformers nor mergekit exposes a name-based parser: mergekit reads indices from its
per-architecture JSON templates, which exist only for architectures it knows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# A block list segment ("layers", "h", "blocks", "layer", "block") followed by its index, as a
# whole dotted segment: ``model.layers.3.mlp`` -> 3, ``h.11.attn`` -> 11, never ``ch.3`` or
# ``layers.3`` at the very end of a name (a block index is always followed by the block's parts).
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer|block)\.(\d+)\.")

# Config keys that give the number of blocks, in the order transformers' configs use them.
_NUM_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


def layer_index(name: str) -> int | None:
    """The transformer block a tensor belongs to, or None for embeddings, final norm and head.

    >>> layer_index("model.layers.3.self_attn.q_proj.weight"), layer_index("h.11.attn.c_attn.bias")
    (3, 11)
    >>> layer_index("model.embed_tokens.weight") is None
    True
    """
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def layer_filter(name: str) -> str | None:
    """The text naming a tensor's block (``.layers.3.``, ``h.11.``), or None outside the blocks.

    As a mergekit ``filter`` (a substring of the tensor name) it selects exactly that block's
    tensors, which is how a search gives each block its own merge settings.

    >>> layer_filter("model.layers.3.mlp.up_proj.weight"), layer_filter("h.11.attn.c_attn.bias")
    ('.layers.3.', 'h.11.')
    """
    match = _LAYER.search(name)
    return match.group(0) if match else None


def num_layers(
    names: Iterable[str] = (), *, config: Mapping[str, Any] | str | Path | None = None
) -> int | None:
    """The number of blocks: from a config (dict, ``config.json`` or its folder), else the names.

    The config wins because a checkpoint may leave a block out of ``names`` (a partial adapter);
    the names are the fallback for state dicts that come without one.
    """
    cfg: Mapping[str, Any] | None = None
    if isinstance(config, str | Path):
        path = Path(config)
        path = path / "config.json" if path.is_dir() else path
        if path.is_file():
            try:
                cfg = json.loads(path.read_text())
            except (OSError, ValueError):
                cfg = None
    elif config is not None:
        cfg = config
    if isinstance(cfg, Mapping):
        for key in _NUM_LAYER_KEYS:
            if isinstance(cfg.get(key), int) and cfg[key] > 0:
                return int(cfg[key])
        text = cfg.get("text_config")
        if isinstance(text, Mapping):
            found = num_layers(config=text)
            if found:
                return found
    indices = [i for n in names if (i := layer_index(n)) is not None]
    return max(indices) + 1 if indices else None


def layer_position(name: str, n_layers: int | None) -> float:
    """Where a tensor's block sits in [0, 1], as mergekit interpolates gradients; 0 outside blocks.

    >>> layer_position("h.2.mlp.c_fc.weight", 5)
    0.5
    """
    index = layer_index(name)
    if index is None or not n_layers:
        return 0.0
    return index / (n_layers - 1) if n_layers > 1 else 1.0
