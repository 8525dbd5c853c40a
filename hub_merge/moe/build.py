"""Assemble a MoE checkpoint (Mixtral, Qwen2-MoE or Qwen3-MoE) from a base and 1-8 experts.

Layouts (the Hub's, which every transformers version and vLLM load) are in :mod:`.arch`: for
Mixtral ``model.layers.N.block_sparse_moe.gate.weight`` (experts, hidden) and
``model.layers.N.block_sparse_moe.experts.E.{w1,w2,w3}.weight`` (gate, down, up projections);
for Qwen2/Qwen3-MoE ``model.layers.N.mlp.gate.weight`` and
``model.layers.N.mlp.experts.E.{gate,up,down}_proj.weight``, plus Qwen2-MoE's shared expert.
Everything else (embeddings, attention, norms, lm_head) is shared.

Tensors stream from the inputs into :class:`~hub_merge.tensors.ShardedWriter` one at a time; only
the router's hidden-state pass holds one dense model (shared weights + one expert's MLPs) in
memory, as mergekit-moe does with its base. The checkpoint is written to a staging folder, loaded
back to measure its routing and write its card, and only then renamed to ``out``: a failure at
any step leaves no output folder.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ..errors import ConfigError, IncompatibleModelsError
from ..merge.methods import TensorMerge, get_method
from ..merge.run import SIDE_FILES
from ..tensors import DEFAULT_SHARD_BYTES, ShardedWriter, resolve_device
from .arch import ARCHS, AUTO, OUTPUT_ARCHS, shared_mlp_name
from .experts import mlp_name, open_experts
from .router import (
    MERGEKIT_MODES,
    PromptSet,
    check_mode,
    embed_gates,
    encode,
    gates_from_features,
    mergekit_gates,
    random_gates,
    router_inputs,
)

SharedMode = Literal["base", "average"]


@dataclass(frozen=True)
class MoeSettings:
    """How the MoE is assembled. ``shared='average'``: base + the mean of the experts' deltas."""

    router: str = "hidden"
    top_k: int = 2
    shared: SharedMode = "base"
    prompt_limit: int = 64  # rows read from each prompt JSONL file
    seed: int = 0  # for ``router='random'``
    output_arch: str = "auto"  # mixtral, qwen2_moe, qwen3_moe; auto: from the base's type
    # Qwen2-MoE's shared expert: None (an empty block), "base", or a model (ref or folder)
    shared_expert: str | None = None

    def check(self, n_experts: int) -> None:
        check_mode(self.router)
        if self.output_arch not in OUTPUT_ARCHS:
            raise ConfigError(
                f"--output-arch {self.output_arch!r} is not one of {', '.join(OUTPUT_ARCHS)}."
            )
        if self.shared not in ("base", "average"):
            raise ConfigError(f"shared must be 'base' or 'average'; got {self.shared!r}.")
        if not 1 <= self.top_k <= n_experts:
            raise ConfigError(
                f"--top-k {self.top_k} must be between 1 and the number of experts ({n_experts})."
            )
        if self.prompt_limit < 1:
            raise ConfigError(f"prompt_limit must be positive; got {self.prompt_limit}.")


@dataclass(frozen=True)
class ExpertSpec:
    """One expert as the user gives it: a Hub ref or folder, its positive prompts and, for the
    ``mergekit`` routers, optional negative prompts (their vector is subtracted, as mergekit-moe's
    ``negative_prompts``)."""

    model: str | Path
    prompts: str | Path | Sequence[str]
    name: str | None = None
    negative_prompts: str | Path | Sequence[str] | None = None


@dataclass
class MoeResult:
    folder: Path
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def routing(self) -> dict[str, Any]:
        return self.manifest.get("routing", {})


def _name(ref: Any, given: str | None) -> str:
    if given:
        return given
    text = str(ref).rstrip("/").split("/")[-1].split("@")[0]
    return text or "expert"


def _resolve(ref: str | Path, **hub: Any) -> Any:
    from ..hub import pull

    return pull(ref, **hub)


class _Assembler:
    def __init__(
        self,
        base: Any,
        experts: list[ExpertSpec],
        settings: MoeSettings,
        device: str,
        hub: dict[str, Any],
    ) -> None:
        settings.check(len(experts))
        self.settings = settings
        self.device = resolve_device(device)
        self.base_pulled = _resolve(base, **hub)
        pulled = [_resolve(e.model, **hub) for e in experts]
        specs = [
            (_name(e.model, e.name), p.path, p.repo_id, p.revision)
            for e, p in zip(experts, pulled, strict=True)
        ]
        self.base, self.cfg, self.experts = open_experts(
            self.base_pulled.path, specs, settings.output_arch
        )
        self.arch = ARCHS[
            settings.output_arch
            if settings.output_arch != "auto"
            else AUTO[str(self.cfg.get("model_type"))]
        ]
        if settings.shared_expert is not None and not self.arch.shared_expert:
            raise ConfigError(
                f"--shared-expert: {self.arch.architecture} has no shared expert (Qwen2-MoE has)."
            )
        self.shared_source = self._shared_source(settings.shared_expert, hub)
        self.pulled = pulled
        self.prompts = [
            PromptSet.from_value(e.prompts, limit=settings.prompt_limit) for e in experts
        ]
        if any(e.negative_prompts for e in experts) and settings.router not in MERGEKIT_MODES:
            raise ConfigError(
                "Negative prompts are mergekit-moe's: use them with --router mergekit or "
                f"mergekit-mean (not {settings.router!r})."
            )
        self.negatives = [
            PromptSet.from_value(e.negative_prompts, limit=settings.prompt_limit)
            if e.negative_prompts
            else None
            for e in experts
        ]
        self.n_layers = int(self.cfg["num_hidden_layers"])
        self.hidden = int(self.cfg["hidden_size"])
        self.shared_names = [n for n in self.base.names if not mlp_name(n)]
        self.mlp_names = [n for n in self.base.names if mlp_name(n)]
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.base_pulled.path)
        if self.tokenizer.pad_token_id is None and self.tokenizer.eos_token_id is None:
            raise IncompatibleModelsError(
                "The base's tokenizer has neither a pad nor an EOS token."
            )
        self.pad_id = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id
        )

    def _shared_source(self, which: str | None, hub: dict[str, Any]) -> Any:
        """Qwen2-MoE's shared expert MLPs: None (empty), the base's, or another model's."""
        if which is None:
            return None
        if which == "base":
            return self.base
        from ..merge.inputs import open_source

        src = open_source(_resolve(which, **hub).path, self.base)
        for n in self.mlp_names:
            if n not in src.names or tuple(src.shape(n)) != tuple(self.base.shape(n)):
                raise IncompatibleModelsError(
                    f"--shared-expert {which} lacks {n!r} with the base's shape; the shared "
                    "expert must be a fine-tune or adapter of the base."
                )
        return src

    # -- names ----------------------------------------------------------------------------------

    def gate_name(self, layer: int) -> str:
        return self.arch.gate(layer)

    def expert_name(self, name: str, e: int) -> str:
        layer, proj = mlp_name(name) or (0, "")
        return self.arch.expert(layer, proj, e)

    def missing_biases(self) -> dict[str, int]:
        """Qwen2-MoE's q/k/v biases a llama/mistral base lacks (written as zeros): name -> size."""
        if self.arch.name != "qwen2_moe":
            return {}
        out = {}
        for layer in range(self.n_layers):
            for proj in ("q_proj", "k_proj", "v_proj"):
                name = f"model.layers.{layer}.self_attn.{proj}.bias"
                weight = f"model.layers.{layer}.self_attn.{proj}.weight"
                if name not in self.base.names:
                    out[name] = self.base.shape(weight)[0]
        return out

    def shared_expert_layout(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        if not self.arch.shared_expert:
            return {}
        dtype = self.base.dtype(self.mlp_names[0])
        out = {}
        for name in self.mlp_names:
            layer, proj = mlp_name(name) or (0, "")
            shape = self.base.shape(name)
            if self.shared_source is None:  # an empty block: shared_expert_intermediate_size 0
                shape = (0, shape[1]) if proj != "down_proj" else (shape[0], 0)
            out[self.arch.shared(layer, proj)] = (tuple(shape), dtype)
        for layer in range(self.n_layers):
            out[self.arch.shared_gate(layer)] = ((1, self.hidden), dtype)
        return out

    def layout(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        out = {n: (self.base.shape(n), self.base.dtype(n)) for n in self.shared_names}
        gate_dtype = self.base.dtype(self.mlp_names[0])
        for name, size in self.missing_biases().items():
            out[name] = ((size,), gate_dtype)
        for layer in range(self.n_layers):
            out[self.gate_name(layer)] = ((len(self.experts), self.hidden), gate_dtype)
        for e in range(len(self.experts)):
            for n in self.mlp_names:
                out[self.expert_name(n, e)] = (self.base.shape(n), self.base.dtype(n))
        out.update(self.shared_expert_layout())
        return out

    # -- tensors --------------------------------------------------------------------------------

    def shared_tensor(self, name: str) -> torch.Tensor:
        base = self.base.get(name)
        if self.settings.shared == "base" or not base.is_floating_point():
            return base
        n = len(self.experts)
        merge = TensorMerge(get_method("task_arithmetic"), {}, [{"weight": 1.0 / n}] * n)
        models = [e.source.get(name, dtype=torch.float32) for e in self.experts]
        return merge(name, models, base.float(), out_dtype=base.dtype)

    def _dense_model(self, shared: dict[str, torch.Tensor]) -> Any:
        from transformers import AutoConfig, AutoModelForCausalLM

        cfg = AutoConfig.from_pretrained(self.base_pulled.path)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(shared, strict=False)
        bad = [k for k in missing if not mlp_name(k) and k != "lm_head.weight"]
        if bad or unexpected:
            raise IncompatibleModelsError(
                f"The base's tensors do not fit its own config: missing {bad[:3]}, unexpected "
                f"{list(unexpected)[:3]}."
            )
        if getattr(cfg, "tie_word_embeddings", False):
            model.tie_weights()
        return model.to(self.device).eval()

    def _sequences(self, prompts: PromptSet) -> list[list[int]]:
        return [encode(self.tokenizer, p, c)[0] for p, c in prompts.texts]

    def gates(
        self, shared: dict[str, torch.Tensor], mlps: list[dict[str, torch.Tensor]] | None
    ) -> torch.Tensor:
        mode, n_exp = self.settings.router, len(self.experts)
        if mode == "random":
            return random_gates(self.n_layers, n_exp, self.hidden, self.settings.seed)
        seqs = [self._sequences(p) for p in self.prompts]
        if mode == "embed":
            return embed_gates(shared["model.embed_tokens.weight"], seqs, self.n_layers)
        if mode in MERGEKIT_MODES:  # mergekit-moe's gate: the base's residual stream
            return mergekit_gates(
                self.base_pulled.path,
                [[prompt for prompt, _ in p.texts] for p in self.prompts],
                [None if n is None else [prompt for prompt, _ in n.texts] for n in self.negatives],
                average=mode == "mergekit-mean",
                device=self.device,
            )
        model = self._dense_model(shared)
        features = []
        for e in range(n_exp):
            state = {k: v.to(torch.float32) for k, v in (mlps or [])[e].items()}
            model.load_state_dict(state, strict=False)
            features.append(router_inputs(model, seqs[e], self.pad_id, self.device))
        del model
        return gates_from_features(features, mode)

    def write(self, staging: Path, max_shard_bytes: int, progress: bool) -> dict[str, Any]:
        from tqdm.auto import tqdm

        layout = self.layout()
        need_mlps = self.settings.router in ("hidden", "hidden-mean")
        writer = ShardedWriter(
            staging, layout, max_shard_bytes=max_shard_bytes, metadata={"format": "pt"}
        )
        try:
            bar = tqdm(total=len(layout), desc="moe: writing", disable=not progress, unit="t")
            shared: dict[str, torch.Tensor] = {}
            for name in self.shared_names:
                t = self.shared_tensor(name)
                writer.write(name, t)
                shared[name] = t.float()
                bar.update(1)
            for name, (shape, dtype) in {
                **{n: ((k,), layout[n][1]) for n, k in self.missing_biases().items()},
                **self.shared_expert_layout(),
            }.items():
                layer_proj = shared_mlp_name(name)
                if self.shared_source is not None and layer_proj is not None:
                    t = self.shared_source.get(
                        f"model.layers.{layer_proj[0]}.mlp.{layer_proj[1]}.weight"
                    )
                else:  # zero biases, an empty shared expert, a shared gate of sigmoid(0) = 0.5
                    t = torch.zeros(shape, dtype=dtype)
                writer.write(name, t)
                bar.update(1)
            mlps: list[dict[str, torch.Tensor]] = []
            for e, expert in enumerate(self.experts):
                kept: dict[str, torch.Tensor] = {}
                for name in self.mlp_names:
                    t = expert.source.get(name)
                    writer.write(self.expert_name(name, e), t)
                    if need_mlps:
                        kept[name] = t
                    bar.update(1)
                mlps.append(kept)
            gates = self.gates(shared, mlps if need_mlps else None)
            for layer in range(self.n_layers):
                writer.write(self.gate_name(layer), gates[layer])
                bar.update(1)
            bar.close()
            writer.add_file(
                "config.json",
                json.dumps(
                    self.arch.config(
                        self.base_pulled.path,
                        len(self.experts),
                        self.settings.top_k,
                        int(self.cfg["intermediate_size"]) if self.shared_source else 0,
                    ),
                    indent=2,
                ),
            )
            for side in SIDE_FILES:
                path = self.base_pulled.path / side
                if side != "config.json" and path.is_file():
                    writer.add_file(side, path.read_bytes())
            writer.finalize()
        except BaseException:
            writer.abort()
            raise
        return self.counts()

    def counts(self) -> dict[str, int]:
        shared = sum(self.base.reader.numel(n) for n in self.shared_names)
        mlp = sum(self.base.reader.numel(n) for n in self.mlp_names)
        router = self.n_layers * len(self.experts) * self.hidden
        if self.arch.shared_expert:  # always active: the shared expert and its gate
            shared += (mlp if self.shared_source is not None else 0) + self.n_layers * self.hidden
        shared += sum(self.missing_biases().values())
        return {
            "total": shared + len(self.experts) * mlp + router,
            "active": shared + self.settings.top_k * mlp + router,
            "per_expert_mlp": mlp,
            "shared": shared,
            "router": router,
        }

    def manifest(self, counts: dict[str, int]) -> dict[str, Any]:
        from ..card import dependency_versions

        def model(p: Any) -> dict[str, Any]:
            # a local folder is named, never its absolute path (cards are public)
            return {
                "id": p.repo_id or f"local:{Path(p.path).name}",
                "repo_id": p.repo_id,
                "revision": p.revision,
                "license": p.license,
            }

        return {
            "kind": "moe",
            "architecture": self.arch.architecture,
            "base": {**model(self.base_pulled), "model_type": self.cfg.get("model_type")},
            "experts": [
                {
                    "name": e.name,
                    **model(p),
                    "kind": "adapter" if e.is_adapter else "full",
                    "prompts": {
                        "source": Path(ps.source).name if ps.source != "strings" else "strings",
                        "sha256": ps.digest,
                        "count": len(ps.texts),
                    },
                }
                for e, p, ps in zip(self.experts, self.pulled, self.prompts, strict=True)
            ],
            "settings": asdict(self.settings),
            "router_mode": self.settings.router,
            "top_k": self.settings.top_k,
            "parameters": counts,
            "versions": dependency_versions(),
        }


def _command(base: Any, experts: Sequence[ExpertSpec], settings: MoeSettings) -> str:
    import shlex

    parts = ["hub-merge", "moe", "--base", str(base)]
    for e in experts:
        prompts = e.prompts if isinstance(e.prompts, (str, Path)) else ";;".join(e.prompts)
        parts += ["--expert", str(e.model), "--prompts", str(prompts)]
    if any(e.negative_prompts for e in experts):
        for e in experts:
            neg = e.negative_prompts or ""
            parts += [
                "--negative-prompts",
                str(neg if isinstance(neg, (str, Path)) else ";;".join(neg)),
            ]
    parts += ["--router", settings.router, "--top-k", str(settings.top_k)]
    parts += ["--shared", settings.shared]
    if settings.output_arch != "auto":
        parts += ["--output-arch", settings.output_arch]
    if settings.shared_expert is not None:
        parts += ["--shared-expert", settings.shared_expert]
    parts += ["--out", "OUT"]
    return shlex.join(parts)


def build_moe(
    base: str | Path,
    experts: Sequence[ExpertSpec],
    out: str | Path,
    settings: MoeSettings | None = None,
    *,
    test_rows: Sequence[str | Path] | None = None,
    license: str | None = None,
    device: str = "auto",
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
    progress: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
    cache_dir: str | None = None,
    command: str | None = None,
) -> MoeResult:
    """Build the MoE into ``out`` with its card, routing plot and ``hub_merge.json``.

    Args:
        base: the base model (Hub ref or folder): Llama/Mistral (-> Mixtral or Qwen2-MoE),
            Qwen2 (-> Qwen2-MoE) or Qwen3 (-> Qwen3-MoE); ``settings.output_arch`` chooses.
        experts: 1-8 full fine-tunes or LoRA adapters of ``base``, each with positive prompts
            (a task JSONL file, or strings).
        test_rows: optional task JSONL files, one per expert in order, on which router accuracy
            is measured and recorded (the positive prompts are always measured).
        license: the card's license; default: the parents' license when they all agree.

    Raises:
        ConfigError, TaskFileError: bad settings or prompts (before anything is read).
        UnsupportedRepoError, IncompatibleModelsError: see :func:`open_experts`.
        LicenseConflictError: parents' licenses differ or are unknown and none was given.

    >>> build_moe("org/base", [ExpertSpec("org/math", "math.jsonl")], "moe")  # doctest: +SKIP
    """
    from .card import license_of, write_moe_card

    settings = settings or MoeSettings()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConfigError(
            f"{out} already exists and is not empty; choose another --out or --overwrite."
        )
    if test_rows is not None and len(test_rows) != len(experts):
        raise ConfigError(
            f"Give one test file per expert ({len(experts)}), in the experts' order; got "
            f"{len(test_rows)}."
        )
    hub = {"endpoint": endpoint, "token": token, "cache_dir": cache_dir}
    asm = _Assembler(base, list(experts), settings, device, hub)
    tests = None
    if test_rows is not None:
        tests = [PromptSet.from_value(str(p), limit=None) for p in test_rows]
    chosen = license_of([asm.base_pulled, *asm.pulled], license)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.moe-", dir=out.parent))
    try:
        staging = tmp / "model"
        counts = asm.write(staging, max_shard_bytes, progress)
        manifest = asm.manifest(counts)
        manifest["license"] = chosen
        manifest["command"] = command or _command(base, experts, settings)
        manifest = write_moe_card(staging, manifest, asm.prompts, tests, device=asm.device)
        staging.chmod(0o755)
        (staging / "routing.png").chmod(0o644)
        if out.exists():
            out.rename(tmp / "old")  # removed with tmp below; out is never half-written
        staging.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return MoeResult(out, manifest)
