"""In-memory merges for searches: no disk, the base loaded once, results as state dicts.

A search merges hundreds of candidates; each must be evaluated, not saved. ``MergeSession`` holds
the base state dict on the device once, loads experts as state dicts (or adapters as factors,
applied per tensor when merged), merges any mix of them and of previous merges, and loads a
result into one reusable transformers model built from the base config.

Examples:
    >>> s = MergeSession("zoo/base", device="auto")  # doctest: +SKIP
    >>> a, b = s.load("zoo/math"), s.load("zoo/code")  # doctest: +SKIP
    >>> child = s.merge("slerp", [b], {"t": 0.5}, base=a)  # doctest: +SKIP
    >>> model = s.to_model(child)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, IncompatibleModelsError
from ..layers import num_layers
from ..tensors import resolve_device
from .inputs import AdapterSource, CheckpointSource, StateDictSource, TensorSource, open_source
from .kernels import (
    ARITHMETIC_FAST,
    ARITHMETIC_KEY,
    ARITHMETIC_MERGEKIT,
    DARE_RNG,
    DARE_RNG_KEY,
    uses_philox,
)
from .methods import TensorMerge, get_method, needs_base, uses_base, validate_parameters
from .recipe import MergeRecipe
from .registry import MergeInputs, method_for

StateDict = dict[str, torch.Tensor]


@dataclass
class ModelHandle:
    """A loaded merge input: a full state dict on the device, or an adapter over the base."""

    label: str
    source: TensorSource
    state: StateDict | None = None  # set for full models (on the session's device)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def is_adapter(self) -> bool:
        return isinstance(self.source, AdapterSource)

    def tensor(self, name: str, device: torch.device) -> torch.Tensor:
        if self.state is not None:
            return self.state[name]
        return self.source.get(name, device=device)


ModelLike = ModelHandle | Mapping[str, torch.Tensor] | str | Path


class _MergedSource:
    """A merge's tensors, each computed from its inputs' when read (:meth:`MergeSession.merge_lazily`)."""

    def __init__(
        self,
        session: MergeSession,
        op: TensorMerge,
        handles: list[ModelHandle],
        base: ModelHandle | None,
        label: str,
    ) -> None:
        self.session, self.op, self.handles, self.base, self.label = (
            session,
            op,
            handles,
            base,
            label,
        )

    @property
    def names(self) -> list[str]:
        return list(self.session.names)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.session.base.state[name].shape)

    def dtype(self, name: str) -> torch.dtype:
        ref = self.session.base.state[name]
        return self.session.dtype if ref.is_floating_point() else ref.dtype

    def get(
        self, name: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        s = self.session
        ref = s.base.state[name]
        if not ref.is_floating_point():
            return ref
        with torch.no_grad():
            tensors = [h.tensor(name, s.device) for h in self.handles]
            b = self.base.tensor(name, s.device) if self.base is not None else None
            out = self.op(name, tensors, b, out_dtype=s.dtype)
        return out.to(device=device, dtype=dtype or out.dtype)


class MergeSession:
    """Merge models in memory against one base kept on the device.

    Args:
        base (`str | Path | Mapping[str, Tensor]`): base model folder (or its state dict).
        device (`str`, *optional*): ``"auto"`` (CUDA if present), ``"cpu"``, ``"cuda:0"``...
        dtype (`torch.dtype | "auto"`, *optional*): storage dtype of loaded models and merge
            results; default: the base's dtype. ``"auto"``: bfloat16 on a GPU that has it (half
            the memory, tensor-core speed for scoring), else the base's dtype. Arithmetic is
            always float32, one tensor at a time.
    """

    def __init__(
        self,
        base: str | Path | Mapping[str, torch.Tensor],
        *,
        device: str | torch.device = "auto",
        dtype: torch.dtype | str | None = None,
    ) -> None:
        self.device = resolve_device(device)
        if dtype == "auto":
            dtype = _auto_dtype(self.device)
        elif isinstance(dtype, str):
            raise ConfigError(f"dtype must be a torch dtype or 'auto'; got {dtype!r}.")
        self.base_path: Path | None = None
        if isinstance(base, Mapping):
            src: TensorSource = StateDictSource(base, "<base>")
        else:
            self.base_path = Path(base)
            src = CheckpointSource(self.base_path)
        first_float = next((n for n in src.names if src.dtype(n).is_floating_point), None)
        self.dtype = dtype or (src.dtype(first_float) if first_float else torch.float32)
        self.base = self._materialise("base", src)
        self.names = list(self.base.state)
        self.num_layers = self._num_layers()
        self._model = None
        # inputs a registered method keeps loaded between merges (a factor mix's adapters)
        self.method_cache: dict[str, Any] = {}
        self.arithmetic: set[str] = set()  # whose arithmetic the merges so far used (for save)
        self.dare_rng = False  # whether a merge so far drew DARE masks with Philox (for save)

    # --- loading -----------------------------------------------------------------------------

    def _materialise(self, label: str, src: TensorSource) -> ModelHandle:
        state: StateDict = {}
        for name in src.names:
            t = src.get(name, device=self.device)
            state[name] = t.to(self.dtype) if t.is_floating_point() else t
        return ModelHandle(label=label, source=StateDictSource(state, label), state=state)

    def _num_layers(self) -> int | None:
        return num_layers(self.names, config=self.base_path)

    def load(
        self, model: str | Path | Mapping[str, torch.Tensor], *, label: str | None = None
    ) -> ModelHandle:
        """Load an expert once: a full model onto the device, or an adapter kept factored."""
        if isinstance(model, Mapping):
            return self._wrap_state(dict(model), label or "<memory>")
        src = open_source(model, StateDictSource(self.base.state, "base"))
        label = label or str(model)
        if isinstance(src, AdapterSource):
            return ModelHandle(label=label, source=src, info={"adapter": True})
        self._check_shapes(src, label)
        return self._materialise(label, src)

    def _wrap_state(self, state: StateDict, label: str) -> ModelHandle:
        self._check_shapes(StateDictSource(state, label), label)
        return ModelHandle(label=label, source=StateDictSource(state, label), state=state)

    def _check_shapes(self, src: TensorSource, label: str) -> None:
        missing = [n for n in self.names if n not in set(src.names)]
        if missing:
            raise IncompatibleModelsError(
                f"{label} lacks {len(missing)} tensor(s) of the base, e.g. {missing[0]!r}: not the same architecture."
            )
        for n in self.names:
            if tuple(src.shape(n)) != tuple(self.base.state[n].shape):
                raise IncompatibleModelsError(
                    f"{label}: tensor {n!r} has shape {tuple(src.shape(n))}, the base "
                    f"{tuple(self.base.state[n].shape)}"
                    + (" (different vocabulary)." if "embed" in n or "lm_head" in n else ".")
                )

    def _handle(self, model: ModelLike) -> ModelHandle:
        if isinstance(model, ModelHandle):
            return model
        if isinstance(model, Mapping):
            return self._wrap_state(model, "<memory>")  # type: ignore[arg-type]
        return self.load(model)

    # --- merging -----------------------------------------------------------------------------

    def merge(
        self,
        method: str,
        models: Sequence[ModelLike],
        parameters: Mapping[str, Any] | None = None,
        *,
        base: ModelLike | str | None = "session",
        model_parameters: Sequence[Mapping[str, Any]] | None = None,
        seed: int | None = None,
        exact_mergekit: bool = False,
    ) -> StateDict:
        """Merge ``models`` (handles, state dicts or folders) into a new state dict on the device.

        Args:
            method: any mergekit method name (``linear``, ``slerp``, ``ties``...).
            models: the non-base inputs, in order.
            parameters: global settings, mergekit syntax (scalars, gradients, filter lists).
            base: the base input of base-using methods: ``"session"`` (default) = the session's
                base; or a handle/state dict (e.g. slerp's first parent); None = no base.
            model_parameters: one settings dict per model (``weight``, ``density``...).
            seed: seeds random methods (DARE, DELLA) per tensor, deterministically.
            exact_mergekit: mergekit's own arithmetic instead of :mod:`.kernels`' fast kernels.
        """
        merged = self.merge_lazily(
            method,
            models,
            parameters,
            base=base,
            model_parameters=model_parameters,
            seed=seed,
            exact_mergekit=exact_mergekit,
        )
        with torch.no_grad():
            return {name: merged.tensor(name, self.device) for name in self.names}

    def merge_lazily(
        self,
        method: str,
        models: Sequence[ModelLike],
        parameters: Mapping[str, Any] | None = None,
        *,
        base: ModelLike | str | None = "session",
        model_parameters: Sequence[Mapping[str, Any]] | None = None,
        seed: int | None = None,
        exact_mergekit: bool = False,
    ) -> ModelHandle:
        """The merge of :meth:`merge` as an input that computes each tensor when it is read.

        A search merging a child of two merged parents would otherwise hold both parents'
        full state dicts beside the child's: given lazily, the parents cost one tensor each
        at a time (and are merged again per child; the same numbers, tensor for tensor, as
        :meth:`merge`, which is this input read once in full). Everything is checked here,
        before any tensor is computed.
        """
        m = get_method(method)
        params = dict(parameters or {})
        mparams = [dict(p) for p in (model_parameters or [{} for _ in models])]
        if len(mparams) != len(models):
            raise ConfigError(
                f"model_parameters has {len(mparams)} entries for {len(models)} models."
            )
        handles = [self._handle(x) for x in models]
        base_handle = None
        if base is not None and uses_base(m):
            base_handle = (
                self.base if isinstance(base, str) and base == "session" else self._handle(base)
            )
        validate_parameters(
            m, params, mparams, n_inputs=len(handles), has_base=base_handle is not None
        )
        if needs_base(m) and base_handle is None:
            raise ConfigError(f"Method {method!r} needs a base.")
        op = TensorMerge(
            m, params, mparams, num_layers=self.num_layers, seed=seed, exact_mergekit=exact_mergekit
        )
        op.check(self.names)  # a bad value is one ConfigError, before any tensor is merged
        self.arithmetic.add(op.arithmetic)
        self.dare_rng = self.dare_rng or uses_philox(op.kernel)
        source = _MergedSource(self, op, handles, base_handle, f"<{method} merge>")
        return ModelHandle(label=source.label, source=source)

    def merge_recipe(
        self, recipe: MergeRecipe, models: Mapping[str, ModelLike] | None = None
    ) -> StateDict:
        """Run a recipe in memory; ``models`` maps recipe model strings to loaded handles/dicts.

        The recipe's method entry merges it (mergekit's methods through :meth:`merge`).
        """
        models = dict(models or {})
        if recipe.slices:  # layers stacked from several models: a new shape, not this session's
            raise ConfigError(
                "A recipe with `slices` changes the layer count; merge it to a folder "
                "(merge_to_folder, `hub-merge merge`)."
            )
        if recipe.tokenizer is not None:  # a new vocabulary: a new shape, as slices
            raise ConfigError(
                "A recipe with `tokenizer` changes the vocabulary; merge it to a folder "
                "(merge_to_folder, `hub-merge merge`)."
            )

        def get(ref: Any) -> ModelLike:
            return models.get(ref, ref)

        def get_base(ref: Any) -> ModelLike | str:
            same = self.base_path is not None and Path(ref) == self.base_path
            return "session" if (same and ref not in models) else get(ref)

        return method_for(recipe.method).state_dict(
            recipe, MergeInputs(self, resolve=get, resolve_base=get_base)
        )

    # --- models ------------------------------------------------------------------------------

    def to_model(self, state_dict: Mapping[str, torch.Tensor]):
        """Load a state dict into one reusable transformers model (built once from the base config).

        The returned model is the same object on every call, with new weights: evaluate it before
        the next ``to_model``. No disk access after the first call.
        """
        if self.base_path is None:
            raise ConfigError("to_model needs a session built from a base folder (for its config).")
        if self._model is None:
            from transformers import AutoConfig, AutoModelForCausalLM

            config = AutoConfig.from_pretrained(self.base_path, trust_remote_code=False)
            # Built once with real (random) init so non-persistent buffers such as rotary
            # frequencies are correct; every later call only copies weights in.
            # SDPA: PyTorch's fused attention (flash / memory-efficient kernels on GPU)
            model = AutoModelForCausalLM.from_config(
                config, dtype=self.dtype, attn_implementation="sdpa"
            )
            model.to(self.device)
            model.eval()
            self._model = model
        missing, unexpected = self._model.load_state_dict(
            dict(state_dict), strict=False, assign=False
        )
        missing = [k for k in missing if not _is_tied(self._model, k)]
        if missing or unexpected:
            raise IncompatibleModelsError(
                f"State dict does not fit the base architecture: missing {missing[:3]}, unexpected {unexpected[:3]}."
            )
        if getattr(self._model.config, "tie_word_embeddings", False):
            self._model.tie_weights()
        return self._model

    def release_model(self) -> None:
        """Drop the scoring model of :meth:`to_model` and the methods' cached inputs.

        A caller that runs several searches over one session (``hub-merge compare``) calls it
        between them, so a finished search does not keep a model-sized copy while the next one
        trains or merges; the next ``to_model`` builds the model again (a second or two).
        """
        self._model = None
        self.method_cache.clear()

    def save(self, state_dict: Mapping[str, torch.Tensor], out: str | Path, **kwargs: Any) -> Path:
        """Write an in-memory merge as a model folder (base config and tokenizer), atomically."""
        from .run import write_state_dict

        if self.base_path is None:
            raise ConfigError("save needs a session built from a base folder.")
        if self.arithmetic and "metadata" not in kwargs:
            label = ARITHMETIC_FAST if ARITHMETIC_FAST in self.arithmetic else ARITHMETIC_MERGEKIT
            kwargs["metadata"] = {ARITHMETIC_KEY: label}
            if self.dare_rng:
                kwargs["metadata"][DARE_RNG_KEY] = DARE_RNG
        return write_state_dict(state_dict, out, config_from=self.base_path, **kwargs)


def _auto_dtype(device: torch.device) -> torch.dtype | None:
    """bfloat16 on a CUDA device that supports it; None (the base's dtype) elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def _is_tied(model, key: str) -> bool:
    return key == "lm_head.weight" and bool(getattr(model.config, "tie_word_embeddings", False))
