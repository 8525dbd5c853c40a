"""DAM training steps per second, with the teacher cache and one step's phases timed apart.

Trains DAM coefficients (``hub_merge.dam``) for a zoo's LoRA experts on their own dev prompts
and reports: model set-up, the teacher cache (each expert's distributions on its rows, once),
and the median wall time of a training step (a merged forward and backward plus the optimizer)
after one warm-up step. On CUDA the clock is read after ``torch.cuda.synchronize()``.

    python benchmarks/dam_speed.py                                   # smol zoo, CPU
    python benchmarks/dam_speed.py --synthetic 0.5b --device cuda    # no zoo, no download
    python benchmarks/dam_speed.py --synthetic tiny --steps 2        # a CPU smoke run
    python benchmarks/dam_speed.py --profile 2                       # + torch.profiler top ops
    python benchmarks/dam_speed.py --peer dense                      # + the dense merge's step

``--profile N`` runs N more steps under ``torch.profiler`` after the timed ones and prints the
operators with the most self time, and the share of a step in the forward, the backward and the
optimizer (the profiler's own overhead inflates the absolute times, not the shares much).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ZOO = Path.home() / ".cache/hub_merge/zoo/smol-v1"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_steps(trainer, steps: int, top: int = 15) -> str:
    """The top operators by self CPU time over ``steps`` training steps, as the profiler's table,
    then the same split by input shapes (which tensors a costly operator works on)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            with record_function("dam_step"):
                trainer.train_step()
    by_op = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)
    by_shape = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=top
    )
    return f"{by_op}\nby input shapes:\n{by_shape}"


def floor_step(trainer) -> Callable[[], None]:
    """The floor under a DAM step on the same rows: the base model's forward over one step's
    batch (the first ``train_batch_size`` rows of each expert) and a backward that reaches every
    layer (one trainable scalar scales the input embeddings), with the KL-shaped loss at the
    same positions and temperature. Any method that trains something in every layer pays this;
    it has no coefficient, no merge, no teacher and no optimizer step."""
    from hub_merge.dam.data import collate
    from hub_merge.evaluate.scoring import kept_logits

    s = trainer.settings
    hf = trainer.model.model  # frozen (requires_grad False): no weight gradients
    rows = [r for rows in trainer.rows for r in rows[: s.train_batch_size]]
    batch = collate(rows, trainer.pad_id, s.positions, trainer.model.device)
    scale = torch.ones((), device=trainer.model.device, requires_grad=True)

    def step() -> None:
        embeds = hf.get_input_embeddings()(batch.input_ids) * scale
        logits = kept_logits(
            hf, type(hf), batch.loss_mask, inputs_embeds=embeds, attention_mask=batch.attention_mask
        )
        logp = torch.log_softmax(logits.float() / s.temperature, dim=-1)
        (-(logp.detach().exp() * logp).sum()).backward()
        scale.grad = None

    return step


def all_logits_step(trainer) -> Callable[[], None]:
    """DAM's step as it was before it projected only the loss positions: every position's
    logits, then the loss positions picked out (the path a model without a boolean
    ``logits_to_keep`` takes). It shares the trainer, so it also advances the training."""
    from hub_merge.evaluate.scoring import KEEPS_LOGITS

    cls = type(trainer.model.model)

    def step() -> None:
        KEEPS_LOGITS[cls] = False
        try:
            trainer.train_step()
        finally:
            KEEPS_LOGITS[cls] = True

    return step


def measure(
    zoo_dir: Path,
    *,
    device: str,
    steps: int,
    rows: int,
    batch: int,
    profile: int = 0,
    peer: str | None = None,
) -> dict:
    """Time DAM's steps; with ``peer`` (``dense``: the dense merge's steps; ``floor``: see
    :func:`floor_step`) the peer's too, alternating step by step with DAM's in this process, so
    both see the same load."""
    from hub_merge.dam import DamModel, DamSettings, DamTrainer
    from hub_merge.evaluate import load_tasks

    zoo = json.loads((zoo_dir / "zoo.json").read_text())
    names = list(zoo["adapters"])
    tasks = load_tasks([zoo_dir / p for p in zoo["tasks"].values()], limit=rows)
    prompts = {t.name: list(t.examples) for t in tasks}

    def build(factored: bool) -> tuple[DamTrainer, float, float, bool]:
        t0 = time.perf_counter()
        model = DamModel(
            [zoo_dir / zoo["adapters"][n] for n in names],
            base=zoo_dir / zoo["base"],
            names=names,
            device=device,
            factored=factored,
        )
        settings = DamSettings(steps=steps + 1, train_batch_size=batch, max_rows=rows)
        trainer = DamTrainer(model, prompts, settings)
        setup = time.perf_counter() - t0
        t0 = time.perf_counter()
        cached = trainer.cache_teacher()
        _sync(model.device)
        teacher = time.perf_counter() - t0
        trainer.train_step()  # warm-up: allocator, kernels, optimizer state
        return trainer, setup, teacher, cached

    trainer, setup, teacher, cached = build(True)
    model = trainer.model
    dense = build(False)[0].train_step if peer == "dense" else None
    floor = floor_step(trainer) if peer == "floor" else None
    if floor is not None:
        floor()  # warm-up
    if peer == "all-logits":
        floor = all_logits_step(trainer)
    times: list[float] = []
    peer_times: list[float] = []
    for _ in range(steps):
        for fn, into in ((trainer.train_step, times), (dense or floor, peer_times)):
            if fn is None:
                continue
            _sync(model.device)
            t0 = time.perf_counter()
            fn()
            _sync(model.device)
            into.append(time.perf_counter() - t0)
    step = statistics.median(times)
    profiled = profile_steps(trainer, profile) if profile else None
    out = {
        "zoo": zoo.get("name", str(zoo_dir)),
        "experts": len(names),
        "device": str(model.device),
        "rows_per_expert": rows,
        "batch_per_expert": batch,
        "setup_s": setup,
        "teacher_cache_s": teacher,
        "teacher_cached": cached,
        "step_s": step,
        "steps_per_s": 1 / step,
        "steps_timed": steps,
        "loss_history": trainer.history,
    }
    if profiled is not None:
        out["profile"] = profiled
    if peer_times:
        out[f"peer_{peer}_step_s"] = statistics.median(peer_times)
    if model.device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(model.device) / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, default=ZOO)
    ap.add_argument(
        "--synthetic", choices=["tiny", "smol", "0.5b"], help="build a random zoo and use it"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up)")
    ap.add_argument("--rows", type=int, default=16, help="prompts per expert")
    ap.add_argument("--batch", type=int, default=8, help="rows per expert in a step")
    ap.add_argument("--profile", type=int, default=0, help="profile N more steps (torch.profiler)")
    ap.add_argument(
        "--peer",
        choices=["dense", "floor", "all-logits"],
        help="also time, alternating steps in the same process, and print the ratio: dense = "
        "the step with the merged weights formed densely (DamModel(factored=False), the "
        "pre-factored step); floor = the base model's forward and backward on the same rows; "
        "all-logits = the step projecting every position onto the vocabulary",
    )
    args = ap.parse_args()
    work = None
    try:
        if args.synthetic:
            from benchmarks.synthetic import build_synthetic_zoo

            work = Path(tempfile.mkdtemp(prefix="dam-speed-"))
            args.zoo = build_synthetic_zoo(work, size=args.synthetic)
        result = measure(
            args.zoo,
            device=args.device,
            steps=args.steps,
            rows=args.rows,
            batch=args.batch,
            profile=args.profile,
            peer=args.peer,
        )
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    profiled = result.pop("profile", None)
    if "peer_dense_step_s" in result:
        print(
            f"dense merge: {result['peer_dense_step_s']:.3f} s/step; factored: "
            f"{result['step_s']:.3f} s/step = {result['peer_dense_step_s'] / result['step_s']:.2f}x"
            " faster"
        )
    if "peer_all-logits_step_s" in result:
        print(
            f"every position's logits: {result['peer_all-logits_step_s']:.3f} s/step; the loss "
            f"positions' only: {result['step_s']:.3f} s/step = "
            f"{result['peer_all-logits_step_s'] / result['step_s']:.2f}x faster"
        )
    if "peer_floor_step_s" in result:
        print(
            f"floor (base forward + backward, same rows): {result['peer_floor_step_s']:.3f} s; "
            f"DAM step: {result['step_s']:.3f} s = {result['step_s'] / result['peer_floor_step_s']:.2f}x"
            " the floor"
        )
    print(json.dumps(result, indent=2))
    if profiled:
        print(profiled)
    print(
        f"DAM on {result['zoo']} ({result['experts']} experts, {args.rows} rows each, device "
        f"{result['device']}): {result['step_s']:.3f} s/step = {result['steps_per_s']:.2f} steps/s; "
        f"teacher cache {result['teacher_cache_s']:.2f} s, set-up {result['setup_s']:.1f} s"
    )


if __name__ == "__main__":
    main()
