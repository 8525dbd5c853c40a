"""A synthetic zoo for benchmarks on machines with no download: random Llama base, random LoRA experts.

Why: the GPU check (``benchmarks/gpu_check.sh``) runs on a bare machine that reaches nothing and
receives at most 64 MiB, so it cannot fetch SmolLM2 or carry the smol zoo. This module writes, in
seconds, a folder laid out like a built zoo (``zoo.json``, ``base/``, ``adapters/<task>/``,
``tasks/<task>.jsonl``) that ``search_speed.py`` and ``dam_speed.py`` read as they read the smol
zoo. The weights are random (scores mean nothing); the shapes, file formats and code paths are
the real ones:

- the base: a ``LlamaForCausalLM`` state dict drawn as ``N(0, 0.02)`` (norms 1) in float32,
  saved with ``safetensors`` beside its config and a byte-level tokenizer made with ``tokenizers``;
- each expert: a peft LoRA adapter (rank ``rank``, every attention and MLP projection) with
  random A and B, so each adapter really moves the model;
- the tasks: the zoo's own task generators (``hub_merge.zoo.tasks.make_examples``).

Sizes: ``tiny`` (CPU seconds, for ``--dry-run``), ``smol`` (SmolLM2-135M's layer shapes: 0.12B
parameters, for CPU timings) and ``0.5b`` (hidden 1024, 30 layers, MLP 4096: 0.50B parameters;
2 GB of float32 on disk).

    python benchmarks/synthetic.py /tmp/synth --size tiny
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 2},
    # SmolLM2-135M's layer shapes (hidden 576, MLP 1536, 30 layers), full-size K/V: 0.12B
    "smol": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30},
    "0.5b": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 30},
}
TASKS = ("reverse", "sort", "uppercase", "capitalize")
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def byte_tokenizer():
    """A real fast tokenizer: one token per byte (256) plus <pad>, <bos>, <eos>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<pad>", "<bos>", "<eos>"])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        model_max_length=256,
    )


def build_synthetic_zoo(
    root: Path,
    *,
    size: str = "tiny",
    n_adapters: int = 4,
    rank: int = 8,
    n_dev: int = 64,
    seed: int = 0,
) -> Path:
    """Write the synthetic zoo into ``root`` (created) and return ``root``."""
    from peft import LoraConfig
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from hub_merge.zoo.tasks import make_examples

    if size not in SIZES:
        raise SystemExit(f"unknown synthetic size {size!r}; choose from {', '.join(SIZES)}")
    root = Path(root)
    tok = byte_tokenizer()
    hidden = SIZES[size]["hidden_size"]
    config = LlamaConfig(
        vocab_size=len(tok),
        **SIZES[size],
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 64),
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
        dtype="float32",
        architectures=["LlamaForCausalLM"],
    )
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in LlamaForCausalLM(config).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    base_dir = root / "base"
    base_dir.mkdir(parents=True, exist_ok=True)
    state = {
        k: torch.ones(s) if len(s) == 1 else torch.randn(s, generator=gen) * 0.02
        for k, s in shapes.items()
    }
    save_file(state, str(base_dir / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    modules = [k.removesuffix(".weight") for k in shapes if k.split(".")[-2] in TARGETS]
    adapters, tasks = {}, {}
    for i in range(n_adapters):
        task = TASKS[i % len(TASKS)] if i < len(TASKS) else f"{TASKS[i % len(TASKS)]}{i}"
        folder = root / "adapters" / task
        folder.mkdir(parents=True, exist_ok=True)
        lora = LoraConfig(
            r=rank, lora_alpha=2 * rank, target_modules=list(TARGETS), lora_dropout=0.0
        )
        lora.base_model_name_or_path = str(base_dir)
        lora.save_pretrained(str(folder))
        weights = {}
        for m in modules:
            out_f, in_f = shapes[m + ".weight"]
            weights[f"base_model.model.{m}.lora_A.weight"] = (
                torch.randn((rank, in_f), generator=gen) / in_f**0.5
            )
            weights[f"base_model.model.{m}.lora_B.weight"] = (
                torch.randn((out_f, rank), generator=gen) * 0.01
            )
        save_file(weights, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
        adapters[task] = f"adapters/{task}"
        gen_task = TASKS[i % len(TASKS)]
        rows = make_examples(gen_task, n_dev, seed=seed)
        path = root / "tasks" / f"{task}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        tasks[task] = f"tasks/{task}.jsonl"
    manifest = {
        "name": f"synthetic-{size}",
        "seed": seed,
        "base": "base",
        "experts": {},
        "adapters": adapters,
        "tasks": tasks,
        "train": {},
        "repo_ids": {},
        "params": sum(t.numel() for t in state.values()),
    }
    (root / "zoo.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--size", default="tiny", choices=sorted(SIZES))
    ap.add_argument("--adapters", type=int, default=4)
    ap.add_argument("--rank", type=int, default=8)
    args = ap.parse_args()
    build_synthetic_zoo(args.root, size=args.size, n_adapters=args.adapters, rank=args.rank)
    params = json.loads((args.root / "zoo.json").read_text())["params"]
    print(
        f"synthetic zoo {args.size}: base of {params / 1e6:.1f}M parameters, {args.adapters} LoRA experts"
    )


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
