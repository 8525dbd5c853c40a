"""Training DAM's coefficients: T²·Σ_k KL(expert_k ‖ merge) on expert k's prompts, resumable.

As the reference (arcee-ai/DAM) trains: the KL at temperature T times T², plus 0.01 × the
coefficients' pairwise cosine similarity, MoFO-AdamW (``hub_merge.dam.mofo``; AdamW on request),
the gradient's norm clipped at 1.0. Ours, beyond the reference: the teacher for expert k is the
same module run with "select expert k" (no second model in memory), the teachers' outputs are
cached when they fit (``teacher_cache_mb``), and progress is checkpointed (coefficients and the
optimizer's moments, safetensors, never pickle) so an interrupted training resumes where it
stopped and ends with exactly the coefficients an uninterrupted one would have.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ..atomic import atomic_write
from ..errors import SearchStateError
from ..evaluate import Example
from ..rss import mark, return_freed_memory
from .data import Row, assign_tasks, collate, draw, encode
from .module import COEFFICIENTS_FORMAT, DamModel
from .mofo import MoFOAdamW
from .settings import DamSettings

COEFFICIENTS_FILE = "dam_coefficients.safetensors"
CHECKPOINT_FILE = "dam_checkpoint.safetensors"
_COEF, _AVG, _SQ = "coef::", "exp_avg::", "exp_avg_sq::"


@dataclass
class DamResult:
    """A finished training: the coefficient file, its digest, and what it cost."""

    coefficients: Path
    digest: str  # sha256 of the coefficient file
    steps: int  # optimizer steps in total (including those before a resume)
    history: list[float] = field(default_factory=list)  # KL sum per step
    wall_s: float = 0.0  # this call's training time
    resumed_from: int = 0


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def kl_from_logp(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(p ‖ q) from log-probabilities (positions, vocab)."""
    return (teacher.exp() * (teacher - student)).sum(-1).mean()


def kl_to_teacher(
    teacher: torch.Tensor, student: torch.Tensor, mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Mean over masked positions of KL(softmax(teacher/T) ‖ softmax(student/T)), in float32."""
    t = torch.log_softmax(teacher[mask].float() / temperature, dim=-1)
    s = torch.log_softmax(student[mask].float() / temperature, dim=-1)
    return kl_from_logp(t, s)


class DamTrainer:
    """Trains a :class:`DamModel` on each expert's own prompts.

    Args:
        model: the DAM module (its coefficients start at 1/N).
        prompts: expert name -> that expert's examples (see :func:`assign_tasks`).
        settings: the training settings.
    """

    def __init__(
        self,
        model: DamModel,
        prompts: Mapping[str, Sequence[Example]],
        settings: DamSettings,
        *,
        seed: int = 0,
    ) -> None:
        from transformers import AutoTokenizer

        self.model = model
        self.settings = settings
        self.seed = seed  # the batch order
        prompts = assign_tasks(model.names, prompts, {n: n for n in model.names})
        tok = AutoTokenizer.from_pretrained(model.arch_path, trust_remote_code=False)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.rows: list[list[Row]] = []
        for name in model.names:
            examples = list(prompts[name])[: settings.max_rows]
            self.rows.append(encode(tok, examples, settings.max_length))
        self._teacher: list[list[torch.Tensor]] | None = None
        self.step = 0
        self.resumed_from = 0
        self.history: list[float] = []
        self.optimizer: torch.optim.Optimizer
        if settings.optimizer == "mofo":  # the reference's default
            self.optimizer = MoFOAdamW(
                model.trainable(),
                lr=settings.lr,
                weight_decay=settings.weight_decay,
                alpha=settings.mofo_alpha,
                rows_are_blocks=True,  # one block per expert and layer, as the reference's
            )
        else:
            self.optimizer = torch.optim.AdamW(
                model.trainable(), lr=settings.lr, weight_decay=settings.weight_decay
            )
        self.grad_norm = 0.0  # the last step's gradient norm, before clipping

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.model.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _teacher_logp(self, k: int, rows: Sequence[Row]) -> torch.Tensor:
        """Expert k's log-probabilities (at the temperature) at the loss positions of ``rows``."""
        s = self.settings
        part = collate(rows, self.pad_id, s.positions, self.model.device)
        with torch.no_grad(), self._autocast():
            teacher = self.model.logits(
                part.input_ids, part.attention_mask, select=k, keep=part.loss_mask
            )
        return torch.log_softmax(teacher.float() / s.temperature, dim=-1)

    def cache_teacher(self) -> bool:
        """Compute every training row's teacher distribution once, when it fits the budget.

        The teachers never change, so a step then runs one merged forward and backward only.
        """
        s = self.settings
        positions = sum(
            max(len(r.ids) - 1 - (r.start - 1 if s.positions == "answer" else 0), 0)
            for rows in self.rows
            for r in rows
        )
        vocab = int(self.model.model.config.get_text_config().vocab_size)
        dtype = torch.float16 if s.teacher_dtype == "float16" else torch.float32
        if positions * vocab * dtype.itemsize > s.teacher_cache_mb * 2**20:
            return False
        cache: list[list[torch.Tensor]] = []
        for k, rows in enumerate(self.rows):
            per_row: list[torch.Tensor] = []
            for start in range(0, len(rows), s.train_batch_size):
                chunk = rows[start : start + s.train_batch_size]
                logp = self._teacher_logp(k, chunk).to(dtype)
                counts = collate(chunk, self.pad_id, s.positions, torch.device("cpu"))
                per_row += list(logp.split(counts.loss_mask.sum(1).tolist()))
            cache.append(per_row)
        self._teacher = cache
        return True

    def _kl(
        self, per_expert: Sequence[Sequence[Row]], index: Sequence[Sequence[int]] | None = None
    ) -> torch.Tensor:
        """Σ_k KL(expert_k ‖ merge) on expert k's rows: one merged forward over all rows."""
        s = self.settings
        batch = collate(
            [r for rows in per_expert for r in rows], self.pad_id, s.positions, self.model.device
        )
        with self._autocast():
            # (kept positions, vocab): expert k's rows' positions are one contiguous run
            student = self.model.logits(batch.input_ids, batch.attention_mask, keep=batch.loss_mask)
        kept = batch.loss_mask.sum(1).tolist()
        total = torch.zeros((), device=self.model.device)
        start = at = 0
        for k, rows in enumerate(per_expert):
            if self._teacher is not None and index is not None:
                teacher = torch.cat([self._teacher[k][i] for i in index[k]]).float()
            else:
                teacher = self._teacher_logp(k, rows)
            n = sum(kept[start : start + len(rows)])
            mine = student[at : at + n].float() / s.temperature
            total = total + kl_from_logp(teacher, torch.log_softmax(mine, dim=-1))
            start, at = start + len(rows), at + n
        return total

    def objective(self, kl: torch.Tensor) -> torch.Tensor:
        """The training loss: T² · Σ_k KL (as the reference's trainer) + λ · similarity.

        The T² keeps the KL's gradient on the scale of the logits' (Hinton et al.'s
        distillation); without it the similarity term would weigh T² = 4 times too much.
        """
        s = self.settings
        t2 = s.temperature**2
        return t2 * kl + s.similarity_weight * self.model.similarity()

    def train_step(self) -> float:
        """One optimizer step (``grad_accum`` micro-batches); returns its KL sum."""
        s = self.settings
        self.optimizer.zero_grad(set_to_none=True)
        kl_total = 0.0
        for micro in range(s.grad_accum):
            index = [
                draw(
                    len(rows),
                    s.train_batch_size,
                    seed=self.seed,
                    expert=k,
                    step=self.step,
                    micro=micro,
                )
                for k, rows in enumerate(self.rows)
            ]
            per_expert = [
                [rows[i] for i in idx] for rows, idx in zip(self.rows, index, strict=True)
            ]
            kl = self._kl(per_expert, index)
            loss = self.objective(kl) / s.grad_accum
            loss.backward()
            kl_total += float(kl.detach()) / s.grad_accum
        params = self.model.trainable()
        if s.max_grad_norm > 0:  # the reference's Trainer clips at max_grad_norm 1.0
            self.grad_norm = float(torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm))
        else:
            self.grad_norm = float(torch.nn.utils.get_total_norm([p.grad for p in params]))
        self.optimizer.step()
        self.step += 1
        self.history.append(kl_total)
        return kl_total

    @torch.no_grad()
    def loss(self) -> float:
        """Σ_k KL on all of expert k's rows, deterministic (for reports and tests)."""
        bs = self.settings.train_batch_size
        total = 0.0
        longest = max(len(rows) for rows in self.rows)
        chunks = 0
        for start in range(0, longest, bs):
            index = [
                list(range(start, min(start + bs, len(rows)))) or list(range(min(bs, len(rows))))
                for rows in self.rows
            ]
            per_expert = [
                [rows[i] for i in idx] for rows, idx in zip(self.rows, index, strict=True)
            ]
            total += float(self._kl(per_expert, index))
            chunks += 1
        return total / chunks

    # --- checkpoints ---------------------------------------------------------------------------

    def _fingerprint(self) -> str:
        spec = {
            "settings": self.settings.resume_settings(),
            "seed": self.seed,
            "experts": self.model.names,
        }
        return json.dumps(spec, sort_keys=True)

    def save_checkpoint(self, path: str | Path) -> None:
        tensors = {_COEF + n: t for n, t in self.model.coefficient_tensors().items()}
        for name, c in self.model.coefficients.items():
            state = self.optimizer.state.get(c)
            if state:
                tensors[_AVG + name] = state["exp_avg"].detach().cpu().contiguous()
                tensors[_SQ + name] = state["exp_avg_sq"].detach().cpu().contiguous()
        meta = {
            "format": COEFFICIENTS_FORMAT + "-checkpoint",
            "fingerprint": self._fingerprint(),
            "step": str(self.step),
            "history": json.dumps(self.history),
        }
        atomic_write(path, save_safetensors(tensors, metadata=meta))

    def load_checkpoint(self, path: str | Path) -> None:
        path = Path(path)
        raw = path.read_bytes()
        try:
            tensors = load_safetensors(raw)
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
        except Exception as err:  # noqa: BLE001 - any parse failure means a corrupt file
            raise SearchStateError(f"DAM checkpoint {path} is corrupt ({err}); delete it.") from err
        if meta.get("fingerprint") != self._fingerprint():
            raise SearchStateError(
                f"DAM checkpoint {path} was trained with other settings or experts; delete it "
                "or use another run folder."
            )
        self.model.load_coefficients(
            {n[len(_COEF) :]: t for n, t in tensors.items() if n.startswith(_COEF)}, where=str(path)
        )
        self.step = self.resumed_from = int(meta["step"])
        self.history = [float(x) for x in json.loads(meta.get("history", "[]"))]
        for name, c in self.model.coefficients.items():
            if _AVG + name in tensors:
                self.optimizer.state[c] = {
                    "step": torch.tensor(float(self.step)),
                    "exp_avg": tensors[_AVG + name].to(c.device),
                    "exp_avg_sq": tensors[_SQ + name].to(c.device),
                }

    def fit(
        self,
        *,
        checkpoint: str | Path | None = None,
        progress: bool = True,
        on_step: Callable[[int, float], None] | None = None,
    ) -> float:
        """Train to ``settings.steps``, resuming from ``checkpoint`` when it exists; seconds spent."""
        s = self.settings
        if checkpoint is not None and Path(checkpoint).is_file():
            self.load_checkpoint(checkpoint)
        start = time.perf_counter()
        if self.step < s.steps and self._teacher is None and s.teacher_cache_mb > 0:
            self.cache_teacher()
            return_freed_memory()  # the teachers' forward passes
            mark("dam: teacher cache")
        bar = None
        if progress and self.step < s.steps:
            from tqdm.auto import tqdm

            bar = tqdm(total=s.steps, initial=self.step, desc="DAM", unit="step", leave=False)
        try:
            while self.step < s.steps:
                kl = self.train_step()
                # A step frees a model's worth of merged weights and its logits; glibc's heap
                # kept them and grew by ~0.4 GB over 30 steps on the smol zoo.
                return_freed_memory()
                if not math.isfinite(kl):
                    raise SearchStateError(
                        f"DAM: the loss became {kl} at step {self.step}; lower the lr (now {s.lr})."
                    )
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{kl:.4f}")
                if on_step is not None:
                    on_step(self.step, kl)
                if checkpoint is not None and (
                    self.step % s.checkpoint_every == 0 or self.step == s.steps
                ):
                    self.save_checkpoint(checkpoint)
        finally:
            if bar is not None:
                bar.close()
        mark("dam: training")
        return time.perf_counter() - start


def save_coefficients(
    model: DamModel, path: str | Path, extra: dict[str, str] | None = None
) -> str:
    """Write the coefficient file (safetensors, atomically); returns its sha256."""
    meta = {**model.coefficient_metadata(), **(extra or {})}
    atomic_write(path, save_safetensors(model.coefficient_tensors(), metadata=meta))
    return file_digest(path)


def read_coefficients(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a coefficient file; refuses anything that is not one."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise SearchStateError(f"DAM coefficient file {path} does not exist.")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as err:  # noqa: BLE001
        raise SearchStateError(f"DAM coefficient file {path} is corrupt ({err}).") from err
    if meta.get("format") != COEFFICIENTS_FORMAT:
        raise SearchStateError(f"{path} is not a DAM coefficient file ({COEFFICIENTS_FORMAT}).")
    return tensors, meta


def train_dam(
    experts: Mapping[str, str | Path],
    prompts: Mapping[str, Sequence[Example]],
    out_dir: str | Path,
    *,
    base: str | Path | None = None,
    settings: DamSettings | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    model: DamModel | None = None,
    seed: int = 0,
    base_state: Mapping[str, torch.Tensor] | None = None,
) -> DamResult:
    """Train DAM coefficients for ``experts`` (name -> folder) and save them in ``out_dir``.

    ``prompts`` maps each expert's name (or its task's name, matched as in
    :func:`~hub_merge.dam.data.assign_tasks`) to its examples: the task's training rows when
    there are any, else its dev rows. Resumes from ``out_dir/dam_checkpoint.safetensors``.
    ``base_state``: the base already in memory (see :class:`DamModel`), so it is not held twice.

    Raises:
        ConfigError, TaskFileError, IncompatibleModelsError: before anything is trained.
    """
    settings = settings or DamSettings()
    names = list(experts)
    assigned = assign_tasks(names, prompts)  # bad input fails before any weight is loaded
    if model is None:
        model = DamModel(
            [experts[n] for n in names],
            base=base,
            names=names,
            device=device,
            train_embeddings_norms=settings.train_embeddings_norms,
            bias_init=settings.bias_init,
            base_state=base_state,
        )
    mark("dam: experts loaded")
    trainer = DamTrainer(model, assigned, settings, seed=seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wall = trainer.fit(checkpoint=out_dir / CHECKPOINT_FILE, progress=progress, on_step=on_step)
    path = out_dir / COEFFICIENTS_FILE
    digest = save_coefficients(
        model,
        path,
        {"settings": json.dumps({**settings.recipe_settings(), "seed": seed}, sort_keys=True)},
    )
    return DamResult(path, digest, trainer.step, list(trainer.history), wall, trainer.resumed_from)


def describe(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str]) -> dict[str, Any]:
    """Per expert and tensor kind: mean/min/max of the coefficients (for summaries and cards)."""
    experts = json.loads(meta.get("experts", "[]"))
    kinds = json.loads(meta.get("kinds", "{}"))
    out: dict[str, Any] = {}
    for k, expert in enumerate(experts):
        by_kind: dict[str, list[torch.Tensor]] = {}
        for name, t in tensors.items():
            by_kind.setdefault(kinds.get(name, "other"), []).append(t[k].reshape(-1).float())
        out[expert] = {}
        for kind, parts in sorted(by_kind.items()):
            v = torch.cat(parts)
            out[expert][kind] = {
                "mean": float(v.mean()),
                "min": float(v.min()),
                "max": float(v.max()),
            }
    return out
