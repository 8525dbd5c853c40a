"""The DAM module: one transformers model whose weights are functions of per-expert coefficients.

For every tensor the experts disagree on, expert k contributes ``W_k`` scaled by its coefficient
``c_k`` (a vector over a linear layer's input columns, broadcast over rows; one scalar for a
bias), and the merged weight is ``W = Σ_k c_k ⊙ W_k``. Nothing in the transformers model is
rewritten: its forward runs through ``torch.func.functional_call`` with the merged tensors, so
the same module also runs as pure expert ``k`` (the teacher) by passing expert k's tensors.

A LoRA expert is held factored: ``W_k = W_base + L_k R_k`` with the scale folded into ``L_k``,
so the base is in memory once and each adapter costs its factors. Since a column scaling
commutes with the product, ``c ⊙ (L R) = L (R ⊙ c)`` and the dense delta is never stored.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..errors import ConfigError, IncompatibleModelsError
from ..evaluate.scoring import kept_logits
from ..tensors import CheckpointReader, LoraAdapterReader, is_adapter_folder, resolve_device

Kind = Literal["linear", "bias", "embedding", "norm", "other"]
COEFFICIENTS_FORMAT = "hub-merge-dam/1"


@dataclass
class _Lora:
    left: torch.Tensor  # (rows, r), the adapter's scale folded in
    right: torch.Tensor  # (r, cols)


@dataclass
class MergedParam:
    """One tensor the experts disagree on, with each expert's version of it.

    ``axis`` is the tensor axis the coefficient vector runs along (None: one scalar per expert).
    ``dense[k]`` is expert k's full tensor, or None where expert k uses the base; ``lora[k]`` its
    low-rank delta on top of that.
    """

    name: str
    kind: Kind
    axis: int | None
    trainable: bool
    base: torch.Tensor
    dense: list[torch.Tensor | None]
    lora: list[_Lora | None]

    def coefficient_shape(self) -> tuple[int, ...]:
        return () if self.axis is None else (int(self.base.shape[self.axis]),)

    def _view(self, c: torch.Tensor) -> torch.Tensor:
        """A coefficient (scalar or vector along ``axis``) shaped to broadcast over the tensor."""
        if self.axis is None:
            return c
        shape = [1] * self.base.dim()
        shape[self.axis] = -1
        return c.reshape(shape)

    def _scaled_delta(self, lora: _Lora, c: torch.Tensor) -> torch.Tensor:
        # c ⊙ (L R) without the dense delta: scale R's columns (axis -1) or L's rows (axis 0).
        if self.axis is None:
            return (lora.left * c) @ lora.right
        if self.axis == self.base.dim() - 1:
            return lora.left @ (lora.right * c)
        return (lora.left * c[:, None]) @ lora.right

    def expert(self, k: int) -> torch.Tensor:
        """Expert k's own tensor (the teacher's weights)."""
        w = self.dense[k] if self.dense[k] is not None else self.base
        lora = self.lora[k]
        return w if lora is None else w + lora.left @ lora.right

    def __post_init__(self) -> None:
        # Column-scaled LoRA terms of all experts as one product: [L_1 … L_N] @ ([R_1; …; R_N] ⊙ c)
        # with each R_k row scaled by c_k. One matmul of inner size Σ r_k, instead of N matmuls
        # and N full-size additions (the step's cost on CPU is mostly these passes over W).
        self._fused: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        with_lora = [k for k, lora in enumerate(self.lora) if lora is not None]
        if with_lora and self.axis is not None and self.axis == self.base.dim() - 1:
            lefts = [self.lora[k].left for k in with_lora]  # type: ignore[union-attr]
            rights = [self.lora[k].right for k in with_lora]  # type: ignore[union-attr]
            owner = torch.cat(
                [
                    torch.full((r.shape[0],), k, dtype=torch.long)
                    for k, r in zip(with_lora, rights, strict=True)
                ]
            ).to(self.base.device)
            self._fused = (torch.cat(lefts, dim=1), torch.cat(rights, dim=0), owner)

    def merged(self, coef: torch.Tensor) -> torch.Tensor:
        """``Σ_k c_k ⊙ W_k`` for coefficients of shape ``(N, *coefficient_shape())``."""
        on_base = [k for k, d in enumerate(self.dense) if d is None]
        out: torch.Tensor | None = None
        if on_base:
            out = self.base * self._view(coef[on_base].sum(0))
        for k, d in enumerate(self.dense):
            if d is not None:
                term = d * self._view(coef[k])
                out = term if out is None else out + term
        if self._fused is not None:
            left, right, owner = self._fused
            out = torch.addmm(out, left, right * coef[owner])
        else:
            for k, lora in enumerate(self.lora):
                if lora is not None:
                    out = out + self._scaled_delta(lora, coef[k])
        if out is None:  # unreachable: N >= 2 experts each add a term
            raise ConfigError(f"DAM: no expert contributes to {self.name!r}.")
        return out

    def linear(
        self, x: torch.Tensor, coef: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """``x · merged(coef)ᵀ + bias`` without forming the merged weight.

        For a linear weight (column coefficients, ``axis`` 1) whose experts are all the base
        plus an optional LoRA: ``(x ⊙ Σ_k c_k) baseᵀ + (x (R ⊙ c)ᵀ) Lᵀ``, the same terms as
        :meth:`merged`, applied to ``x``.
        """
        fn = torch.nn.functional.linear
        y = fn(x * coef.sum(0), self.base, bias)
        if self._fused is not None:
            left, right, owner = self._fused
            return y + fn(fn(x, right * coef[owner]), left)
        for k, lora in enumerate(self.lora):
            if lora is not None:
                y = y + fn(fn(x, lora.right * coef[k]), lora.left)
        return y


def _kind(module: nn.Module, leaf: str) -> tuple[Kind, int | None]:
    """What a parameter is, and the axis of its input columns (its coefficient vector's axis)."""
    cls = type(module).__name__
    if isinstance(module, nn.Linear):
        return ("linear", 1) if leaf == "weight" else ("bias", None)
    if cls == "Conv1D":  # GPT-2 style: weight is (in, out), so the input columns are axis 0
        return ("linear", 0) if leaf == "weight" else ("bias", None)
    if isinstance(module, nn.Embedding):
        return "embedding", 1
    if "norm" in cls.lower():
        return "norm", 0
    return "other", None


def _on_state(
    arch: Path, state: Mapping[str, torch.Tensor], device: torch.device
) -> nn.Module | None:
    """The base architecture with ``state``'s tensors as its parameters (shared, not copied).

    None when ``state`` cannot be used as it is (another dtype or device, a missing tensor):
    the caller then reads the base from disk. The module is built without initialising its
    weights (they are replaced at once), so building it costs no model-sized memory.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    floats = [t for t in state.values() if t.is_floating_point()]
    if not floats or any(t.dtype != torch.float32 or t.device != device for t in floats):
        return None
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # an older layout: initialise (slower, the same result)
        no_init_weights = contextlib.nullcontext  # type: ignore[assignment]
    config = AutoConfig.from_pretrained(arch, trust_remote_code=False)
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(dict(state), strict=False, assign=True)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    own = dict(model.named_parameters())
    if unexpected or any(n in own and n not in state for n in missing):
        return None  # a tensor the architecture has and the state lacks: not its base
    return model.to(device)


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


class DamModel:
    """N experts in one module, merged by trainable per-column coefficients (init 1/N).

    As in the reference, every linear layer (``lm_head`` included; a tied one is the embedding)
    gets coefficients, and bias coefficients start at 1. Ours: LoRA experts are held factored
    over one base, and a layer no adapter touches is the base times ``Σ_k c_k``.

    Args:
        experts (`Sequence[str | Path]`): expert folders, full models and/or LoRA adapters.
        base (`str | Path`, *optional*): the common base; required when an expert is an adapter.
            Without it the first expert's folder gives the architecture.
        names (`Sequence[str]`, *optional*): short expert names (default: folder names).
        device (`str`, *optional*): ``auto`` (CUDA when present), ``cpu``, ``cuda:0``...
        train_embeddings_norms (`bool`, *optional*): train embedding and norm coefficients too
            (by default they stay at 1/N, the paper's default).
        bias_init (`str`, *optional*): ``one`` (the reference's: bias coefficients start at 1)
            or ``uniform`` (1/N, so the untrained merge is exactly the uniform average).
        base_state (`Mapping[str, Tensor]`, *optional*): the base's weights already in memory
            (a search's ``MergeSession.base.state``), float32 on ``device``: the module uses
            them instead of reading the base again, so the base is held once per process. They
            are never written to.

    Raises:
        ConfigError: fewer than two experts, or an adapter without a base.
        IncompatibleModelsError: experts of another architecture, shape or vocabulary.

    >>> dam = DamModel(["zoo/adapters/a", "zoo/adapters/b"], base="zoo/base")  # doctest: +SKIP
    >>> logits = dam.logits(ids, mask)             # the merge        # doctest: +SKIP
    >>> teacher = dam.logits(ids, mask, select=0)  # pure expert 0    # doctest: +SKIP
    """

    def __init__(
        self,
        experts: Sequence[str | Path],
        *,
        base: str | Path | None = None,
        names: Sequence[str] | None = None,
        device: str | torch.device = "auto",
        train_embeddings_norms: bool = False,
        bias_init: str = "one",
        base_state: Mapping[str, torch.Tensor] | None = None,
        factored: bool = True,
    ) -> None:
        if bias_init not in ("one", "uniform"):
            raise ConfigError(f"DAM: bias_init must be 'one' or 'uniform'; got {bias_init!r}.")
        self.folders = [Path(e) for e in experts]
        if len(self.folders) < 2:
            raise ConfigError(f"DAM merges at least two experts; got {len(self.folders)}.")
        self.names = (
            [str(n) for n in names] if names is not None else [f.name for f in self.folders]
        )
        if len(self.names) != len(self.folders) or len(set(self.names)) != len(self.names):
            raise ConfigError(f"DAM needs one unique name per expert; got {self.names}.")
        for f in self.folders:
            if not f.is_dir():
                raise ConfigError(f"DAM expert {f} is not a local folder; pull it first.")
        adapters = [is_adapter_folder(f) for f in self.folders]
        if any(adapters) and base is None:
            raise ConfigError("DAM with LoRA experts needs their base model (`base`).")
        self.base_path = Path(base) if base is not None else None
        self.arch_path = self.base_path or self.folders[0]
        self.device = resolve_device(device)
        self.train_embeddings_norms = train_embeddings_norms
        self._check_full_experts([f for f, a in zip(self.folders, adapters, strict=True) if not a])

        from transformers import AutoModelForCausalLM

        config = _read_config(self.arch_path)
        self.out_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(
            str(config.get("dtype") or config.get("torch_dtype")), torch.float32
        )
        # Float32 master weights: coefficients are learned in float32; on a GPU the forward runs
        # under bf16 autocast.
        model = None
        if base_state is not None and self.base_path is not None:
            model = _on_state(self.arch_path, base_state, self.device)
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(
                self.arch_path, dtype=torch.float32, trust_remote_code=False
            )
        model.to(self.device).eval().requires_grad_(False)
        self.model = model
        self.params: dict[str, MergedParam] = {}
        self._load_experts(adapters)
        n = len(self.folders)
        self.coefficients: dict[str, torch.Tensor] = {}
        for name, p in self.params.items():
            # the reference starts bias coefficients at 1 (so the untrained merge sums the
            # experts' biases); "uniform" starts them at 1/N like every other coefficient (ours)
            init = 1.0 if p.kind == "bias" and bias_init == "one" else 1.0 / n
            c = torch.full((n, *p.coefficient_shape()), init, device=self.device)
            self.coefficients[name] = nn.Parameter(c) if p.trainable else c
        self._frozen: dict[str, torch.Tensor] = {}
        # Linear layers whose merge is applied without forming the merged weight (see logits)
        self.factored: dict[str, nn.Linear] = {}
        if factored:
            for name, p in self.params.items():
                module = self.model.get_submodule(name.rpartition(".")[0])
                if (
                    p.trainable
                    and p.kind == "linear"
                    and p.axis == 1
                    and isinstance(module, nn.Linear)
                    and module.weight is p.base
                    and all(d is None for d in p.dense)
                ):
                    self.factored[name] = module

    # --- loading -------------------------------------------------------------------------------

    def _check_full_experts(self, full: list[Path]) -> None:
        """Different architectures or vocabularies: refuse before any weight is read."""
        if not full:
            return
        from ..compat import compatibility_problems
        from ..hub import inspect_folder

        reference = inspect_folder(self.arch_path)
        problems = compatibility_problems(
            reference, [inspect_folder(f) for f in full if f.resolve() != self.arch_path.resolve()]
        )
        if problems:
            raise IncompatibleModelsError(
                f"DAM needs experts of one architecture and vocabulary: {problems[0]}"
                + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else "")
            )

    def _load_experts(self, adapters: list[bool]) -> None:
        readers: list[CheckpointReader | LoraAdapterReader] = [
            LoraAdapterReader(f) if a else CheckpointReader(f)
            for f, a in zip(self.folders, adapters, strict=True)
        ]
        own = dict(self.model.named_parameters())  # tied weights appear once
        for folder, reader in zip(self.folders, readers, strict=True):
            if isinstance(reader, LoraAdapterReader):
                reader.check_biases(own, str(self.arch_path))
                unknown = [n for n in reader.names if n not in own]
                if unknown:
                    raise IncompatibleModelsError(
                        f"Adapter {folder} changes {unknown[0]!r}, which the base "
                        f"{self.arch_path} does not have: it belongs to another base model."
                    )
        with torch.no_grad():
            for name, param in own.items():
                module_name, _, leaf = name.rpartition(".")
                kind, axis = _kind(self.model.get_submodule(module_name), leaf)
                dense: list[torch.Tensor | None] = []
                loras: list[_Lora | None] = []
                for folder, reader in zip(self.folders, readers, strict=True):
                    d, lora = self._expert_tensor(folder, reader, name, param)
                    dense.append(d)
                    loras.append(lora)
                if all(lora is None for lora in loras):
                    values = [d if d is not None else param for d in dense]
                    if all(torch.equal(values[0], v) for v in values[1:]):
                        # the experts agree: one copy is enough (rebound, never written: the
                        # base tensor may be the caller's, see base_state)
                        if values[0] is not param:
                            param.data = values[0]
                        if kind not in ("linear", "bias"):
                            continue  # frozen at 1/N each, Σ = 1: nothing to merge here
                        # As the reference: every linear layer (lm_head included) and bias gets
                        # coefficients, even where the experts agree (a layer no adapter
                        # touches): W = (Σ_k c_k) ⊙ W_base, the base held once.
                        dense = [None] * len(dense)
                if all(d is not None for d in dense):
                    param.data = dense[0]  # the base is never used here: do not hold a copy
                trainable = kind in ("linear", "bias") or (
                    self.train_embeddings_norms and kind in ("embedding", "norm")
                )
                self.params[name] = MergedParam(name, kind, axis, trainable, param, dense, loras)
        for reader in readers:
            if isinstance(reader, CheckpointReader):
                reader.release()

    def _expert_tensor(
        self,
        folder: Path,
        reader: CheckpointReader | LoraAdapterReader,
        name: str,
        param: torch.Tensor,
    ) -> tuple[torch.Tensor | None, _Lora | None]:
        shape = tuple(param.shape)
        if isinstance(reader, CheckpointReader):
            if name not in reader:
                raise IncompatibleModelsError(
                    f"{folder} has no tensor {name!r}: not the architecture of {self.arch_path}."
                )
            t = reader.get(name, device=self.device, dtype=torch.float32)
            if tuple(t.shape) != shape:
                vocab = " (a different vocabulary)" if "embed" in name or "lm_head" in name else ""
                raise IncompatibleModelsError(
                    f"{folder}: tensor {name!r} is {tuple(t.shape)}, the base's {shape}{vocab}; "
                    "DAM merges models of one architecture and size."
                )
            return t, None
        bias = reader.bias_delta(name)
        if bias is not None:  # lora_bias=True: the base bias shifted by scale * lora_B.bias
            return param.detach().to(self.device, torch.float32) + bias.to(self.device), None
        override = reader.override(name)
        dense = None
        if override is not None:
            if tuple(override.shape) != shape:
                raise IncompatibleModelsError(
                    f"Adapter {folder} replaces {name!r} with shape {tuple(override.shape)}, the "
                    f"base's is {shape} (a resized vocabulary?): merge it with its own base."
                )
            dense = override.to(device=self.device, dtype=torch.float32)
        f = reader.lowrank(name, device=self.device)  # the scale folded in
        if f is None:
            return dense, None
        # delta = scale·B·A, or its transpose (embeddings, fan_in_fan_out): as left @ right.
        left, right = f.left, f.right
        if (left.shape[0], right.shape[1]) != shape:
            raise IncompatibleModelsError(
                f"Adapter {folder} changes {name!r} with shape {(left.shape[0], right.shape[1])} "
                f"but the base has {shape}: it was trained on another base."
            )
        return dense, _Lora(left, right)

    # --- the merged module ---------------------------------------------------------------------

    @property
    def n(self) -> int:
        return len(self.folders)

    def trainable(self) -> list[nn.Parameter]:
        """The coefficients that train (everything else in the module is frozen)."""
        return [c for c in self.coefficients.values() if isinstance(c, nn.Parameter)]

    def weights(
        self, select: int | None = None, *, skip: Collection[str] = ()
    ) -> dict[str, torch.Tensor]:
        """The tensors to run the model with: the merge, or pure expert ``select``."""
        if select is not None:
            return {name: p.expert(select) for name, p in self.params.items()}
        out: dict[str, torch.Tensor] = {}
        for name, p in self.params.items():
            if name in skip:
                continue
            if p.trainable:
                out[name] = p.merged(self.coefficients[name])
            else:  # frozen at its coefficients: computed once
                if name not in self._frozen:
                    with torch.no_grad():
                        self._frozen[name] = p.merged(self.coefficients[name])
                out[name] = self._frozen[name]
        return out

    def logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        select: int | None = None,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of the merged model (or of expert ``select``) through ``functional_call``;
        with ``keep`` (a boolean (batch, length) mask) only the kept positions', flattened row by
        row, (number kept, vocab), as :func:`~hub_merge.evaluate.scoring.kept_logits` projects
        them.

        The merge's linear layers whose experts are all the base plus an optional LoRA
        (``self.factored``) never form their merged weight: ``W = base · Σ_k c_k + L (R ⊙ c)``
        with column coefficients gives ``x Wᵀ = (x ⊙ Σ_k c_k) baseᵀ + (x (R ⊙ c)ᵀ) Lᵀ``. The
        backward then needs the input's gradient (``g · base``, wanted anyway) and low-rank
        terms, never the full weight gradient nor the per-step dense merge: the step's largest
        costs on CPU (benchmarks/RESULTS.md §12). Written here: no library applies a
        column-scaled merge this way. ``factored=False`` keeps the dense merge (the benchmark's
        peer, and the test's reference).
        """
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
        routed = self.factored if select is None else {}
        weights = self.weights(select, skip=routed)
        for name, module in routed.items():
            module.forward = self._factored_forward(module, name)  # undone below

        def forward(**kw: Any) -> Any:
            return torch.func.functional_call(self.model, weights, args=(), kwargs=kw, strict=False)

        try:
            if keep is not None:
                return kept_logits(forward, type(self.model), keep, **kwargs)
            return forward(**kwargs).logits
        finally:
            for module in routed.values():
                del module.forward  # back to nn.Linear.forward

    def _factored_forward(self, module: nn.Linear, name: str) -> Any:
        p, c = self.params[name], self.coefficients[name]

        def forward(x: torch.Tensor) -> torch.Tensor:
            # module.bias is the merged bias here: functional_call has put it in place
            return p.linear(x, c, module.bias)

        return forward

    def similarity(self) -> torch.Tensor:
        """Σ over trainable vector coefficients of the mean pairwise cosine similarity of experts.

        The paper's regulariser: it pushes the experts' coefficient vectors apart so each layer
        learns which columns to take from which expert, instead of N copies of one average.
        """
        n = self.n
        iu = torch.triu_indices(n, n, offset=1, device=self.device)
        total = torch.zeros((), device=self.device)
        for c in self.coefficients.values():
            if isinstance(c, nn.Parameter) and c.dim() == 2:
                unit = torch.nn.functional.normalize(c, dim=1)
                sim = unit @ unit.T
                total = total + sim[iu[0], iu[1]].mean()
        return total

    # --- coefficients --------------------------------------------------------------------------

    def coefficient_tensors(self) -> dict[str, torch.Tensor]:
        return {
            name: c.detach().float().cpu().contiguous() for name, c in self.coefficients.items()
        }

    def coefficient_metadata(self) -> dict[str, str]:
        """What a coefficient file needs to be read back: format, expert order, kinds."""
        return {
            "format": COEFFICIENTS_FORMAT,
            "experts": json.dumps(self.names),
            "kinds": json.dumps({n: p.kind for n, p in self.params.items()}, sort_keys=True),
            "trainable": json.dumps(sorted(n for n, p in self.params.items() if p.trainable)),
        }

    def load_coefficients(self, tensors: dict[str, torch.Tensor], *, where: str) -> None:
        """Set every coefficient from ``tensors`` (a coefficient file or a checkpoint)."""
        missing = sorted(set(self.coefficients) - set(tensors))
        extra = sorted(set(tensors) - set(self.coefficients))
        if missing or extra:
            raise ConfigError(
                f"{where} does not fit these experts: "
                + (f"no coefficients for {missing[0]!r}" if missing else f"unknown {extra[0]!r}")
                + ". Train DAM for this base and these experts."
            )
        with torch.no_grad():
            for name, c in self.coefficients.items():
                t = tensors[name]
                if tuple(t.shape) != tuple(c.shape):
                    raise ConfigError(
                        f"{where}: coefficients of {name!r} are {tuple(t.shape)}, expected "
                        f"{tuple(c.shape)}."
                    )
                c.copy_(t.to(c.device))
        self._frozen.clear()

    # --- materialising -------------------------------------------------------------------------

    def merged_state_dict(self) -> dict[str, torch.Tensor]:
        """The merged checkpoint in the base architecture, every tensor in the output dtype."""
        with torch.no_grad():
            merged = {n: t.detach() for n, t in self.weights().items()}
            state = self.model.state_dict()
            tied = set()
            if getattr(self.model.config, "tie_word_embeddings", False):
                out_emb = self.model.get_output_embeddings()
                if out_emb is not None:
                    tied = {k for k in state if k.endswith("lm_head.weight")}
            out: dict[str, torch.Tensor] = {}
            for name, t in state.items():
                if name in tied:
                    continue
                value = merged.get(name, t)
                out[name] = value.to(self.out_dtype) if value.is_floating_point() else value
        return out

    def save_pretrained(
        self, out: str | Path, *, metadata: dict[str, str] | None = None, overwrite: bool = False
    ) -> Path:
        """Write the merge as a model folder of the base architecture (atomically)."""
        from ..merge.run import write_state_dict

        return write_state_dict(
            self.merged_state_dict(),
            out,
            config_from=self.arch_path,
            metadata=metadata,
            overwrite=overwrite,
        )
