"""hub-merge vs mergekit-yaml vs the I/O floor: wall time and peak RSS, measured in one run.

Builds random-weight Llama models on disk (default: hidden 1024, 24 layers, vocab 32000, bf16,
~0.47B parameters each; ``--small`` for a quick run), then runs each merge (default: linear,
TIES, DARE-TIES) with the ``mergekit-yaml`` CLI, with ``hub-merge merge``, and as the *floor*: a
bare script that reads the same input files with safetensors, adds them tensor by tensor and
writes the sum with safetensors (the same bytes in and out, no merge logic; torch import
included, as in both tools). Each runs in its own subprocess; peak RSS is that subprocess tree's
``ru_maxrss`` (read in a fresh wrapper process per measurement). Prints every tool's time as a
ratio to mergekit's and to the floor's.

    python benchmarks/merge_speed.py --small
    python benchmarks/merge_speed.py --layers 8 --workdir /tmp/mbench
    python benchmarks/merge_speed.py --cuda           # both on GPU (mergekit-yaml --cuda)
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hub_merge.merge import MergeRecipe, ModelEntry  # noqa: E402

_WRAP = (
    "import json, resource, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "rc = subprocess.run(json.loads(sys.argv[1]), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n"
    "wall = time.perf_counter() - t\n"
    "if rc.returncode: sys.stderr.write(rc.stderr.decode()[-3000:]); sys.exit(rc.returncode)\n"
    "print(json.dumps({'wall': wall, 'rss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n"
)


def build_models(
    root: Path, *, hidden: int, layers: int, vocab: int, inter: int, n_experts: int = 2
) -> list[Path]:
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 64),
        tie_word_embeddings=False,
        dtype="bfloat16",
        architectures=["LlamaForCausalLM"],
    )
    shapes = {
        "model.embed_tokens.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (vocab, hidden),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[p + f"self_attn.{n}.weight"] = (hidden, hidden)
        shapes[p + "mlp.gate_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.up_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.down_proj.weight"] = (hidden, inter)
        shapes[p + "input_layernorm.weight"] = (hidden,)
        shapes[p + "post_attention_layernorm.weight"] = (hidden,)
    gen = torch.Generator().manual_seed(0)
    base = {n: (torch.randn(s, generator=gen) * 0.02).to(torch.bfloat16) for n, s in shapes.items()}
    folders = []
    for k in range(n_experts + 1):
        folder = root / ("base" if k == 0 else f"expert{k}")
        folder.mkdir(parents=True, exist_ok=True)
        state = (
            base
            if k == 0
            else {
                n: (t.float() + 0.002 * torch.randn(t.shape, generator=gen)).to(torch.bfloat16)
                for n, t in base.items()
            }
        )
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
        cfg.save_pretrained(folder)
        folders.append(folder)
        del state
    return folders


# The floor: read every input with safetensors, add the tensors, write the result.
_FLOOR = (
    "import sys, torch\n"
    "from safetensors import safe_open\n"
    "from safetensors.torch import save_file\n"
    "*ins, out, dev = sys.argv[1:]\n"
    "hs = [safe_open(p, 'pt') for p in ins]\n"
    "res = {}\n"
    "for n in hs[0].keys():\n"
    "    acc = hs[0].get_tensor(n).to(dev)\n"
    "    for h in hs[1:]:\n"
    "        acc = acc + h.get_tensor(n).to(dev)\n"
    "    res[n] = acc.cpu()\n"
    "save_file(res, out)\n"
)


def tool_cmd(script: str, module: str) -> list[str]:
    """The console script beside this Python, else ``python -m module`` (wheels installed with
    ``pip --target`` have no scripts, as on the GPU check's bare machine)."""
    path = Path(sys.executable).parent / script
    return [str(path)] if path.exists() else [sys.executable, "-m", module]


def mergekit_yaml_cmd() -> list[str]:
    return tool_cmd("mergekit-yaml", "mergekit.scripts.run_yaml")


def measure(cmd: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _WRAP, json.dumps(cmd)], capture_output=True, text=True
    )
    if out.returncode:
        raise SystemExit(f"{cmd[0]} failed:\n{out.stderr}")
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--small", action="store_true", help="hidden 256, 4 layers, vocab 8000")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--cuda", action="store_true")
    ap.add_argument("--methods", default="linear,ties,dare_ties")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the three tools N times in turn and report each one's median",
    )
    args = ap.parse_args()
    dims = (
        dict(hidden=256, layers=4, vocab=8000, inter=1024)
        if args.small
        else dict(hidden=1024, layers=args.layers, vocab=32000, inter=4096)
    )
    work = args.workdir or Path(tempfile.mkdtemp(prefix="merge-bench-"))
    base, *experts = build_models(work / "models", **dims)
    print(f"models: {dims}, bf16, in {work}; torch threads {torch.get_num_threads()}")
    header = f"{'method':10} {'tool':10} {'wall s':>8} {'peak RSS MB':>12} {'/mergekit':>10} {'/floor':>8}"
    print(header)
    rows = []
    for method in args.methods.split(","):
        params = {"weight": 0.5} if method == "linear" else {"weight": 0.5, "density": 0.5}
        recipe = MergeRecipe(
            method=method,
            base=None if method == "linear" else str(base),
            models=[ModelEntry(model=str(e), parameters=params) for e in experts],
            seed=0 if method.startswith("dare") else None,
        )
        (work / f"{method}.yaml").write_text(recipe.to_yaml())
        (work / f"{method}.mk.yaml").write_text(recipe.to_mergekit_yaml(input_dtype="bfloat16"))
        inputs = ([] if method == "linear" else [base]) + experts
        runs: dict[str, list[dict]] = {}
        tools = (
            (
                "mergekit",
                [
                    *mergekit_yaml_cmd(),
                    str(work / f"{method}.mk.yaml"),
                    str(work / f"out-mk-{method}"),
                    "--quiet",
                ]
                + (["--cuda"] if args.cuda else [])
                + (["--random-seed", "0"] if method.startswith("dare") else []),
            ),
            (
                "hub-merge",
                [
                    *tool_cmd("hub-merge", "hub_merge"),
                    "merge",
                    str(work / f"{method}.yaml"),
                    "--out",
                    str(work / f"out-hm-{method}"),
                    "--json",
                    "--device",
                    "cuda" if args.cuda else "cpu",
                ],
            ),
            (
                "floor",
                [
                    sys.executable,
                    "-c",
                    _FLOOR,
                    *(str(p / "model.safetensors") for p in inputs),
                    str(work / f"out-fl-{method}.safetensors"),
                    "cuda" if args.cuda else "cpu",
                ],
            ),
        )
        for tool, cmd in [t for _ in range(args.repeat) for t in tools]:
            for d in work.glob(f"out-*-{method}*"):
                shutil.rmtree(d) if d.is_dir() else d.unlink()
            runs.setdefault(tool, []).append(measure(cmd))
        results = {
            tool: {
                "wall": statistics.median(r["wall"] for r in rs),
                "rss_kb": max(r["rss_kb"] for r in rs),
            }
            for tool, rs in runs.items()
        }
        for tool, r in results.items():
            line = (
                f"{method:10} {tool:10} {r['wall']:8.2f} {r['rss_kb'] / 1024:12.0f} "
                f"{r['wall'] / results['mergekit']['wall']:10.2f} {r['wall'] / results['floor']['wall']:8.2f}"
            )
            print(line, flush=True)
            rows.append(line)
        mk, hm = results["mergekit"], results["hub-merge"]
        print(
            f"{method:10} speedup (mergekit wall / hub-merge wall): {mk['wall'] / hm['wall']:.2f}x; "
            f"hub-merge / floor: {hm['wall'] / results['floor']['wall']:.2f}x; "
            f"peak RSS ratio (hub-merge / mergekit): {hm['rss_kb'] / mk['rss_kb']:.2f}",
            flush=True,
        )
        for d in work.glob(f"out-*-{method}*"):
            shutil.rmtree(d) if d.is_dir() else d.unlink()


if __name__ == "__main__":
    main()
