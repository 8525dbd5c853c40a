"""One-pass kinship matrix vs. the paper's pairwise way, measured in one run.

The paper's public code (zjunlp/ModelKinship, ``metrics/calculate.py``) computes one pair at a
time: load the two models and the base whole (fp32, as ``from_pretrained`` did by default then),
subtract, concatenate every delta into one vector per model, and correlate; an N-model matrix
repeats that for all N(N-1)/2 pairs. ``hub_merge.kinship.kinship_matrix`` makes one streaming pass.

Both methods run on the same random Llama models (random base, N experts around it, bf16
safetensors in a temporary folder), each in its own subprocess so peak RSS is measured separately.
The script prints wall time, peak RSS, their ratios, and the largest difference between the two
matrices.

    python benchmarks/kinship_speed.py            # N=6 models of ~106M parameters
    python benchmarks/kinship_speed.py --small    # N=4 models of ~5M parameters, seconds
    python benchmarks/kinship_speed.py --device cuda   # one-pass Gram products on the GPU

``--device`` moves only the one-pass method (its Gram products); the pairwise peer is the paper's
CPU code either way, so on a GPU the ratio is "hub-merge as a user would run it" vs "the paper's
code as published". With ``--device cuda`` the one-pass worker also reports its peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {
    # vocab 32000, hidden 768, 8 layers, MLP 2048: 106M parameters (embedding and head untied)
    "full": {
        "vocab_size": 32000,
        "hidden_size": 768,
        "intermediate_size": 2048,
        "num_hidden_layers": 8,
    },
    "small": {
        "vocab_size": 4000,
        "hidden_size": 256,
        "intermediate_size": 688,
        "num_hidden_layers": 4,
    },
}


def _config(size: str):
    from transformers import LlamaConfig

    return LlamaConfig(
        **SIZES[size],
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        dtype="bfloat16",
    )


def build(root: Path, size: str, n: int) -> int:
    """A random base and ``n`` experts = base + shared + own noise (so kinship is non-trivial)."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    config = _config(size)
    with torch.device("meta"):
        names = {k: tuple(v.shape) for k, v in LlamaForCausalLM(config).state_dict().items()}
    base = {k: (torch.randn(s) * 0.02).to(torch.bfloat16) for k, s in names.items()}
    shared = {k: torch.randn(s) * 0.002 for k, s in names.items()}

    def save(folder: Path, sd: dict) -> None:
        folder.mkdir(parents=True)
        config.save_pretrained(folder)
        save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})

    save(root / "base", base)
    for i in range(n):
        mix = i / max(n - 1, 1)
        sd = {
            k: (v.float() + mix * shared[k] + (1 - mix) * 0.002 * torch.randn(v.shape)).to(
                torch.bfloat16
            )
            for k, v in base.items()
        }
        save(root / f"expert{i}", sd)
    return sum(v.numel() for v in base.values())


def one_pass(base: Path, experts: list[Path], device: str = "cpu") -> list[list[float]]:
    from hub_merge.kinship import kinship_matrix

    return kinship_matrix(experts, base, "pearson", device=device).matrix.tolist()


def pairwise(base: Path, experts: list[Path]) -> list[list[float]]:
    """The paper's approach, pair by pair (re-implemented here, same steps)."""
    import torch
    from transformers import AutoModelForCausalLM

    n = len(experts)
    matrix = [[1.0 if i == j else 0.0 for j in range(n)] for i in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            sds = [
                AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).state_dict()
                for p in (experts[i], experts[j], base)
            ]
            sd1, sd2, sdb = sds
            vocab = sdb["lm_head.weight"].shape[0]
            d1 = torch.cat([(sd1[k][:vocab] - v).view(-1) for k, v in sdb.items()])
            d2 = torch.cat([(sd2[k][:vocab] - v).view(-1) for k, v in sdb.items()])
            del sds, sd1, sd2, sdb
            matrix[i][j] = matrix[j][i] = torch.corrcoef(torch.stack((d1, d2)))[0, 1].item()
            del d1, d2
    return matrix


def _peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Unlike ``ru_maxrss``, it is not inherited from
    the parent through fork + exec, so each worker reports only its own peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB, not Linux-accurate


def reference(base: Path, experts: list[Path]) -> float:
    """Pearson of two experts on whole flattened deltas in float64: the accuracy yardstick."""
    import torch
    from safetensors.torch import load_file

    sdb = load_file(base / "model.safetensors")
    deltas = []
    for path in experts:
        sd = load_file(path / "model.safetensors")
        deltas.append(torch.cat([(sd[k].double() - v.double()).view(-1) for k, v in sdb.items()]))
        del sd
    return torch.corrcoef(torch.stack(deltas))[0, 1].item()


def worker(
    method: str, root: Path, n: int, pair: tuple[int, int] = (0, 1), device: str = "cpu"
) -> None:
    import torch  # both methods pay for it before the clock starts

    if method.startswith("build"):
        print(json.dumps({"params": build(root, method.removeprefix("build_"), n)}))
        return
    if method == "reference":
        experts = [root / f"expert{i}" for i in pair]
        print(json.dumps({"pearson": reference(root / "base", experts)}))
        return
    if method == "pairwise":
        import transformers  # noqa: F401
    else:
        import hub_merge.kinship  # noqa: F401
    experts = [root / f"expert{i}" for i in range(n)]
    cuda = method == "one_pass" and (
        device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    )
    if cuda:
        torch.ones(
            1, device="cuda" if device == "auto" else device
        ).sum().item()  # CUDA context start-up stays off the clock
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    if method == "one_pass":
        matrix = one_pass(root / "base", experts, device)
    else:
        matrix = pairwise(root / "base", experts)
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    result = {"wall_s": wall, "peak_rss_mb": _peak_rss_mb(), "matrix": matrix}
    if cuda:
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(result))


def run(method: str, root: Path, n: int, *extra: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", method, "--root", str(root), "-n", str(n), *extra],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", action="store_true", help="tiny models, a quick check")
    parser.add_argument(
        "--device", default="cpu", help="device of the one-pass method: cpu (default), cuda, auto"
    )
    parser.add_argument(
        "-n", type=int, default=None, help="number of models (default 6, --small 4)"
    )
    parser.add_argument(
        "--worker",
        choices=["one_pass", "pairwise", "build_full", "build_small", "reference"],
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--pair", default="0,1", help=argparse.SUPPRESS)
    args = parser.parse_args()
    n = args.n or (4 if args.small else 6)
    if args.worker:
        first, second = (int(x) for x in args.pair.split(","))
        worker(args.worker, args.root, n, (first, second), args.device)
        return
    size = "small" if args.small else "full"
    root = Path(tempfile.mkdtemp(prefix="kinship-bench-"))
    try:
        t0 = time.perf_counter()
        params = run(f"build_{size}", root, n)["params"]  # in a worker: keeps this process small
        print(
            f"built base + {n} experts of {params / 1e6:.0f}M parameters in {time.perf_counter() - t0:.1f} s"
        )
        results = {
            "one_pass": run("one_pass", root, n, "--device", args.device),
            "pairwise": run("pairwise", root, n),
        }
        import numpy as np

        a, b = (np.array(results[m]["matrix"]) for m in ("one_pass", "pairwise"))
        i, j = np.unravel_index(np.abs(a - b).argmax(), a.shape)  # where the two disagree most
        ref = run("reference", root, n, "--pair", f"{i},{j}")["pearson"]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"one-pass device: {args.device}; pairwise: cpu, fp32 (as the paper's code)")
    for m, r in results.items():
        gpu = f"   peak GPU {r['peak_gpu_mb']:8.0f} MB" if "peak_gpu_mb" in r else ""
        print(f"{m:>9}: wall {r['wall_s']:8.2f} s   peak RSS {r['peak_rss_mb']:8.0f} MB{gpu}")
    one, pair = results["one_pass"], results["pairwise"]
    print(f"speed-up (pairwise / one-pass wall time): {pair['wall_s'] / one['wall_s']:.1f}x")
    print(
        f"memory  (pairwise / one-pass peak RSS):  {pair['peak_rss_mb'] / one['peak_rss_mb']:.1f}x"
    )
    print(f"max |difference| between the two matrices: {np.abs(a - b).max():.2e}")
    print(
        f"pair {(int(i), int(j))} against float64 on whole deltas: one-pass off by "
        f"{abs(a[i, j] - ref):.1e}, pairwise (fp32, as the paper) off by {abs(b[i, j] - ref):.1e}"
    )


if __name__ == "__main__":
    main()
