"""Named tensor groups (attention, mlp, embeddings...) and the ``include`` selectors built on them.

Groups give the per-group breakdown of a kinship matrix and let a user restrict kinship to part
of a model; the vocabulary pattern says which tensors may be larger than the base's (truncated).
"""

from __future__ import annotations

import re

from ..errors import KinshipError

# Named tensor groups, first match wins; a tensor matching none is "other". The patterns cover
# Llama/Mistral/Qwen/Gemma (model.layers.N.self_attn/mlp), GPT-2 (h.N.attn/mlp, wte), GPT-NeoX
# (attention, embed_in/embed_out) and Falcon/BLOOM (self_attention, word_embeddings).
GROUPS: dict[str, re.Pattern[str]] = {
    "embeddings": re.compile(
        r"(^|\.)(embed_tokens|wte|wpe|word_embeddings|embed_in|embed_positions)\."
    ),
    "lm_head": re.compile(r"(^|\.)(lm_head|embed_out)\."),
    "attention": re.compile(r"\.(self_attn|self_attention|attention|attn|cross_attn)\."),
    "mlp": re.compile(r"\.(mlp|feed_forward|ffn|block_sparse_moe|experts)\."),
    "norm": re.compile(r"(norm|ln_\w*|layernorm)[^.]*\.(weight|bias)$"),
}
# Tensors whose dim 0 is the vocabulary: the paper truncates these to the base's vocabulary.
VOCAB_TENSOR = re.compile(
    r"(^|\.)(embed_tokens|wte|word_embeddings|embed_in|lm_head|embed_out)\.weight$"
)


def tensor_group(name: str) -> str:
    """The named group of a tensor (one of ``GROUPS`` or ``"other"``)."""
    for group, pattern in GROUPS.items():
        if pattern.search(name):
            return group
    return "other"


def name_selector(pattern: str):
    """A predicate over tensor names: a group name (see ``GROUPS``, or "other") or a regex."""
    if pattern in GROUPS or pattern == "other":
        return lambda name: tensor_group(name) == pattern
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise KinshipError(
            f"Bad tensor group {pattern!r}: not one of {', '.join(GROUPS)}, other, nor a regular "
            f"expression ({err})."
        ) from None
    return lambda name: regex.search(name) is not None
