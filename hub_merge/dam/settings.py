"""DAM's one settings type: every knob of the training, checked once before anything runs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ..errors import ConfigError

Positions = Literal["all", "answer"]
Optimizers = Literal["mofo", "adamw"]
PAPER_URL = "https://arxiv.org/abs/2410.08371"


@dataclass(frozen=True)
class DamSettings:
    """Settings of a DAM training (Differentiable Adaptive Merging, Arcee AI 2024).

    The training follows the reference (arcee-ai/DAM) by default: KL × T² at T = 2, similarity
    weight 0.01, MoFO-AdamW (alpha 0.3), gradient-norm clipping at 1.0, coefficients on every
    linear layer (lm_head included), bias coefficients starting at 1. Ours, and documented as
    such: the learning rate (the paper uses 1e-3 on 7B models, where the logits move much more
    per unit of coefficient than in a 135M model), LoRA experts held factored, the teacher cache,
    checkpoints and resume, and ``positions``.
    """

    steps: int = field(default=60, metadata={"help": "optimizer steps (>= 1)"})
    lr: float = field(default=5e-3, metadata={"help": "learning rate (MoFO-AdamW or AdamW)"})
    optimizer: Optimizers = field(
        default="mofo",
        metadata={
            "help": "'mofo' (MoFO-AdamW, the reference's default: only the top mofo_alpha "
            "fraction of each layer's coefficients by momentum move per step) or 'adamw'"
        },
    )
    mofo_alpha: float = field(
        default=0.3, metadata={"help": "MoFO: fraction of entries updated per step (reference 0.3)"}
    )
    max_grad_norm: float = field(
        default=1.0,
        metadata={"help": "clip the gradient's global norm to this (reference 1.0); 0: off"},
    )
    train_batch_size: int = field(
        default=8, metadata={"help": "rows per expert in one micro-batch"}
    )
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    temperature: float = field(default=2.0, metadata={"help": "KL temperature (paper: 2)"})
    similarity_weight: float = field(
        default=0.01, metadata={"help": "weight of the mean pairwise cosine similarity term"}
    )
    weight_decay: float = field(
        default=0.0, metadata={"help": "AdamW weight decay (it pulls coefficients towards 0)"}
    )
    train_embeddings_norms: bool = field(
        default=False, metadata={"help": "also train embedding and norm coefficients"}
    )
    bias_init: Literal["one", "uniform"] = field(
        default="one",
        metadata={
            "help": "bias coefficients start at 1 ('one', the reference's: the untrained merge "
            "sums the experts' biases) or at 1/N ('uniform', ours: exactly the uniform average)"
        },
    )
    positions: Positions = field(
        default="all",
        metadata={"help": "KL over all real tokens ('all', the paper's) or answer tokens only"},
    )
    max_rows: int | None = field(
        default=None, metadata={"help": "use at most this many prompts per expert"}
    )
    max_length: int = field(default=256, metadata={"help": "truncate rows to this many tokens"})
    teacher_cache_mb: int = field(
        default=2048,
        metadata={
            "help": "keep the experts' output distributions on the training rows in memory when "
            "they fit in this many MiB (saves N teacher forwards per step); 0: never"
        },
    )
    teacher_dtype: Literal["float32", "float16"] = field(
        default="float32",
        metadata={
            "help": "dtype the cached teacher log-probabilities are kept in: 'float16' halves "
            "the cache (the KL is still computed in float32; the coefficients then differ from "
            "float32's in the last digits)"
        },
    )
    checkpoint_every: int = field(
        default=10, metadata={"help": "steps between coefficient checkpoints"}
    )

    def __post_init__(self) -> None:
        checks = [
            (self.steps >= 1, f"steps must be at least 1; got {self.steps}."),
            (self.lr > 0, f"lr must be positive; got {self.lr}."),
            (
                self.train_batch_size >= 1,
                f"train_batch_size must be at least 1; got {self.train_batch_size}.",
            ),
            (self.grad_accum >= 1, f"grad_accum must be at least 1; got {self.grad_accum}."),
            (self.temperature > 0, f"temperature must be positive; got {self.temperature}."),
            (
                self.optimizer in ("mofo", "adamw"),
                f"optimizer must be 'mofo' or 'adamw'; got {self.optimizer!r}.",
            ),
            (
                0 < self.mofo_alpha <= 1,
                f"mofo_alpha must be in (0, 1]; got {self.mofo_alpha}.",
            ),
            (
                self.bias_init in ("one", "uniform"),
                f"bias_init must be 'one' or 'uniform'; got {self.bias_init!r}.",
            ),
            (self.max_grad_norm >= 0, f"max_grad_norm must be >= 0; got {self.max_grad_norm}."),
            (
                self.similarity_weight >= 0,
                f"similarity_weight must be >= 0; got {self.similarity_weight}.",
            ),
            (self.weight_decay >= 0, f"weight_decay must be >= 0; got {self.weight_decay}."),
            (
                self.positions in ("all", "answer"),
                f"positions must be 'all' or 'answer'; got {self.positions!r}.",
            ),
            (
                self.max_rows is None or self.max_rows >= 1,
                f"max_rows must be at least 1; got {self.max_rows}.",
            ),
            (self.max_length >= 2, f"max_length must be at least 2; got {self.max_length}."),
            (
                self.teacher_cache_mb >= 0,
                f"teacher_cache_mb must be >= 0; got {self.teacher_cache_mb}.",
            ),
            (
                self.teacher_dtype in ("float32", "float16"),
                f"teacher_dtype must be 'float32' or 'float16'; got {self.teacher_dtype!r}.",
            ),
            (
                self.checkpoint_every >= 1,
                f"checkpoint_every must be at least 1; got {self.checkpoint_every}.",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"DAM: {message}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def recipe_settings(self) -> dict[str, Any]:
        """The settings that determine the trained coefficients (stored in the ``dam`` recipe).

        ``checkpoint_every`` and ``teacher_cache_mb`` only change how often progress is saved
        and where the teacher's outputs come from, so they are left out.
        """
        out = self.to_dict()
        out.pop("checkpoint_every")
        out.pop("teacher_cache_mb")
        if out["teacher_dtype"] == "float32":  # the default: recipes made before it stay valid
            out.pop("teacher_dtype")
        return out

    def resume_settings(self) -> dict[str, Any]:
        """What a checkpoint must agree on to be resumed: everything but the step counts.

        The batch of step ``s`` depends only on ``seed`` and ``s`` and the learning rate is
        constant, so training 60 steps and then continuing to 100 equals training 100 at once.
        """
        out = self.recipe_settings()
        out.pop("steps")
        return out
