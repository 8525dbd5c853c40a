"""The MoE checkpoints ``hub-merge moe`` writes: Mixtral, Qwen2-MoE and Qwen3-MoE, as data.

Each output architecture is its tensor names (router, routed experts, optional shared expert),
the base model types it is built from, and its config.json. They are the layouts mergekit-moe
writes (``mergekit/moe/mixtral.py``, ``qwen.py``, ``qwen3.py``), except that experts are stored
one tensor per expert and projection, the layout of the Hub's own checkpoints, which every
transformers version converts on load (mergekit stores Qwen3-MoE's experts fused).

========================  =================  ==========================================
output (``--output-arch``) bases             router / experts / shared expert
========================  =================  ==========================================
``mixtral``               llama, mistral     ``block_sparse_moe.gate``, ``experts.E.w1/w2/w3``
``qwen2_moe``             qwen2 (llama,      ``mlp.gate``, ``mlp.experts.E.*_proj``,
                          mistral)           ``mlp.shared_expert.*``, ``mlp.shared_expert_gate``
``qwen3_moe``             qwen3              ``mlp.gate``, ``mlp.experts.E.*_proj``
========================  =================  ==========================================

Qwen2-MoE always has a shared expert block: without ``--shared-expert`` it is empty
(``shared_expert_intermediate_size: 0``), so the model computes exactly the routed experts' mix,
as the Mixtral output does. A llama/mistral base has no attention biases, which Qwen2-MoE
requires: they are written as zeros (mergekit-moe does the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, UnsupportedRepoError

# The Llama/Qwen MLP projections and Mixtral's names for them (w1 gate, w3 up, w2 down).
MIXTRAL_PROJ = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}


def mixtral_config(base: Path, n_experts: int, top_k: int) -> dict[str, Any]:
    """The Mixtral config.json: the base's geometry, rope and tokens, plus the MoE fields."""
    from transformers import AutoConfig, MixtralConfig

    cfg = AutoConfig.from_pretrained(base)  # llama/mistral only: checked before
    keep = [
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "hidden_act",
        "max_position_embeddings",
        "initializer_range",
        "rms_norm_eps",
        "pad_token_id",
        "bos_token_id",
        "eos_token_id",
        "tie_word_embeddings",
        "sliding_window",
        "attention_dropout",
        "rope_parameters",
    ]
    kw = {k: getattr(cfg, k) for k in keep if getattr(cfg, k, None) is not None}
    out = MixtralConfig(
        **kw,
        num_local_experts=n_experts,
        num_experts_per_tok=top_k,
        router_jitter_noise=0.0,
        output_router_logits=False,
    ).to_dict()
    out["architectures"] = ["MixtralForCausalLM"]
    out["dtype"] = str(getattr(cfg, "dtype", None) or "float32").removeprefix("torch.")
    return out


def shared_mlp_name(name: str) -> tuple[int, str] | None:
    """(layer, projection) of a Qwen2-MoE shared-expert MLP weight name, else None."""
    parts = name.split(".")
    if ".mlp.shared_expert." in name and parts[-1] == "weight":
        return int(parts[2]), parts[-2]
    return None


@dataclass(frozen=True)
class OutputArch:
    """One MoE output: its names, the base types it takes, its transformers class."""

    name: str
    architecture: str
    bases: tuple[str, ...]
    shared_expert: bool = False  # has a shared-expert block (Qwen2-MoE)

    def gate(self, layer: int) -> str:
        if self.name == "mixtral":
            return f"model.layers.{layer}.block_sparse_moe.gate.weight"
        return f"model.layers.{layer}.mlp.gate.weight"

    def expert(self, layer: int, proj: str, e: int) -> str:
        if self.name == "mixtral":
            return f"model.layers.{layer}.block_sparse_moe.experts.{e}.{MIXTRAL_PROJ[proj]}.weight"
        return f"model.layers.{layer}.mlp.experts.{e}.{proj}.weight"

    def shared(self, layer: int, proj: str) -> str:
        return f"model.layers.{layer}.mlp.shared_expert.{proj}.weight"

    def shared_gate(self, layer: int) -> str:
        return f"model.layers.{layer}.mlp.shared_expert_gate.weight"

    def config(
        self, base: Path, n_experts: int, top_k: int, shared_size: int = 0
    ) -> dict[str, Any]:
        """config.json: the base's geometry, rope and tokens, plus the MoE fields."""
        if self.name == "mixtral":
            return mixtral_config(base, n_experts, top_k)
        from transformers import AutoConfig, Qwen2MoeConfig, Qwen3MoeConfig

        cfg = AutoConfig.from_pretrained(base)
        data = {
            k: v
            for k, v in cfg.to_diff_dict().items()
            if k not in ("architectures", "model_type", "auto_map", "transformers_version")
        }
        moe = {
            "num_experts": n_experts,
            "num_experts_per_tok": top_k,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "norm_topk_prob": True,  # top-k weights sum to 1, as Mixtral's (mergekit: the same)
            "moe_intermediate_size": cfg.intermediate_size,
            "output_router_logits": False,
        }
        if self.name == "qwen2_moe":
            moe.update(
                shared_expert_intermediate_size=shared_size,
                use_sliding_window=False,
                sliding_window=None,
            )
            out_cfg = Qwen2MoeConfig(**{**data, **moe})
        else:
            out_cfg = Qwen3MoeConfig(**{**data, **moe})
        out = out_cfg.to_diff_dict()  # what differs from the class defaults, as save_pretrained
        out.pop("transformers_version", None)
        out["architectures"] = [self.architecture]
        out["dtype"] = str(getattr(cfg, "dtype", None) or "float32").removeprefix("torch.")
        return out


ARCHS = {
    "mixtral": OutputArch("mixtral", "MixtralForCausalLM", ("llama", "mistral")),
    "qwen2_moe": OutputArch(
        "qwen2_moe", "Qwen2MoeForCausalLM", ("qwen2", "llama", "mistral"), shared_expert=True
    ),
    "qwen3_moe": OutputArch("qwen3_moe", "Qwen3MoeForCausalLM", ("qwen3",)),
}
# --output-arch auto: the MoE of the base's own family.
AUTO = {"llama": "mixtral", "mistral": "mixtral", "qwen2": "qwen2_moe", "qwen3": "qwen3_moe"}
OUTPUT_ARCHS = ("auto", *ARCHS)
SUPPORTED = (
    "hub-merge moe builds a MixtralForCausalLM from Llama or Mistral bases, a "
    "Qwen2MoeForCausalLM from Qwen2 (or Llama or Mistral) bases and a Qwen3MoeForCausalLM from "
    "Qwen3 bases, with 1-8 full experts or LoRA adapters of that same base"
)


def choose(name: str, base_type: str | None, where: str) -> OutputArch:
    """The output for ``--output-arch name`` (``auto``: from the base's model type)."""
    if name not in OUTPUT_ARCHS:
        raise ConfigError(f"--output-arch {name!r} is not one of {', '.join(OUTPUT_ARCHS)}.")
    if name == "auto":
        if base_type not in AUTO:
            raise UnsupportedRepoError(f"{where} is a {base_type!r} model; {SUPPORTED}.")
        name = AUTO[base_type]
    arch = ARCHS[name]
    if base_type not in arch.bases:
        raise UnsupportedRepoError(
            f"{where} is a {base_type!r} model; --output-arch {name} is built from "
            f"{', '.join(arch.bases)} bases; {SUPPORTED}."
        )
    return arch
