"""The tiny zoo: a 2-layer byte-level Llama, 4 full experts and 4 LoRA adapters, built in seconds.

Good for merge arithmetic, kinship, I/O and Hub round trips; too small to show that merging helps
(the SmolLM2 zoos, :mod:`.smol` and :mod:`.wide`, are for that).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .record import REPO_OWNER, Zoo, cached_build
from .tasks import TINY_TASKS, make_examples, task_sets
from .train import add_lora, build_env, expert_card, progress_bar, save_adapter, train_model

__all__ = ["TINY_NAME", "build_tiny_zoo"]

TINY_NAME = "tiny-v1"
TINY_SEED = 1234


def _byte_tokenizer() -> Any:
    """A real HF tokenizer over the 256 byte values (ids 0-255) plus <pad>, <bos>, <eos>.

    Built with ``tokenizers``: a BPE model with no merges over GPT-2's byte-to-unicode alphabet,
    so every byte is one token and any UTF-8 text round-trips. No special tokens are added on
    encode (like SmolLM2); callers append EOS themselves.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += list(range(ord("®"), ord("ÿ") + 1))
    byte_to_char, extra = {}, 0
    for b in range(256):
        if b in printable:
            byte_to_char[b] = chr(b)
        else:
            byte_to_char[b] = chr(256 + extra)
            extra += 1
    vocab = {byte_to_char[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<pad>", "<bos>", "<eos>"])  # ids 256, 257, 258
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        model_max_length=128,
    )


def _tiny_config(tokenizer: Any) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )


def _save_model(model: Any, tokenizer: Any, folder: Path, card: str) -> None:
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        bos_token_id=model.config.bos_token_id,
        eos_token_id=model.config.eos_token_id,
        pad_token_id=model.config.pad_token_id,
        do_sample=False,
        max_new_tokens=32,
    )
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    (folder / "README.md").write_text(card, encoding="utf-8")


def _build_tiny(tmp: Path, final: Path, seed: int, progress: bool) -> Zoo:
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    # Sized for ~20 s on one busy core with a clear answer-loss margin for every child.
    pre_steps, expert_steps, lora_steps = 150, 60, 60
    tasks = TINY_TASKS
    total = pre_steps + len(tasks) * (expert_steps + lora_steps)
    bar = progress_bar(total, "tiny zoo", progress)
    tok = _byte_tokenizer()
    dev_paths, train_paths, train_rows = task_sets(tasks, seed, 128, 2000, tmp)

    # Base: pre-trained on "copy" only, so it knows the format and alphabet but none of the tasks.
    torch.manual_seed(seed)
    base = LlamaForCausalLM(_tiny_config(tok))
    pretrain = make_examples("copy", 4000, seed=seed)
    train_model(
        base, tok, pretrain, steps=pre_steps, lr=5e-3, batch_size=32, seed=seed, progress=bar
    )
    repo = {"base": f"{REPO_OWNER}/tiny-llama-base"}
    _save_model(
        base,
        tok,
        tmp / "base",
        expert_card(
            "tiny-llama-base",
            base_model=None,
            relation=None,
            library="transformers",
            tags=["hub-merge", "test-zoo", "llama"],
            body="A 2-layer Llama with a byte-level vocabulary, pre-trained for seconds on a "
            "string-copy task. Built by `hub_merge.zoo.build_tiny_zoo` for tests.",
        ),
    )

    experts, adapters = {}, {}
    for i, t in enumerate(tasks):
        model = AutoModelForCausalLM.from_pretrained(str(tmp / "base"), dtype=torch.float32)
        train_model(model, tok, train_rows[t], steps=expert_steps, lr=3e-3, batch_size=32,
               seed=seed + 10 + i, progress=bar)  # fmt: skip
        experts[t] = final / "experts" / t
        repo[f"expert/{t}"] = f"{REPO_OWNER}/tiny-llama-{t}"
        _save_model(
            model,
            tok,
            tmp / "experts" / t,
            expert_card(
                f"tiny-llama-{t}",
                base_model=repo["base"],
                relation="finetune",
                library="transformers",
                tags=["hub-merge", "test-zoo", "llama", t],
                body=f"`{repo['base']}` fully fine-tuned on the synthetic `{t}` task.",
            ),
        )

        base_model = AutoModelForCausalLM.from_pretrained(str(tmp / "base"), dtype=torch.float32)
        torch.manual_seed(seed + 20 + i)
        peft_model = add_lora(base_model, r=8)
        train_model(peft_model, tok, train_rows[t], steps=lora_steps, lr=1e-2, batch_size=32,
               seed=seed + 30 + i, progress=bar)  # fmt: skip
        adapters[t] = final / "adapters" / t
        repo[f"adapter/{t}"] = f"{REPO_OWNER}/tiny-llama-lora-{t}"
        save_adapter(peft_model, tmp / "adapters" / t, final / "base")
        (tmp / "adapters" / t / "README.md").write_text(
            expert_card(
                f"tiny-llama-lora-{t}",
                base_model=repo["base"],
                relation="adapter",
                library="peft",
                tags=["hub-merge", "test-zoo", "lora", t],
                body=f"A LoRA adapter (r=8, all linear layers) of `{repo['base']}` for the "
                f"synthetic `{t}` task.",
            ),
            encoding="utf-8",
        )
    bar.close()
    return Zoo(
        name=TINY_NAME,
        root=final,
        base=final / "base",
        experts=experts,
        adapters=adapters,
        tasks={t: final / "tasks" / f"{t}.jsonl" for t in dev_paths},
        train={t: final / "train" / f"{t}.jsonl" for t in train_paths},
        repo_ids=repo,
        seed=seed,
    )


def build_tiny_zoo(
    cache_dir: str | Path | None = None, force: bool = False, *, progress: bool = False
) -> Zoo:
    """Build (once) and return the tiny zoo: a 2-layer byte-level Llama, 4 experts, 4 adapters.

    Args:
        cache_dir: parent of ``zoo/tiny-v1``; default ``$HUB_MERGE_CACHE`` or ``~/.cache/hub_merge``.
        force: rebuild even if a cached zoo exists (replaced atomically).
        progress: show a tqdm bar while building.

    >>> zoo = build_tiny_zoo()
    >>> sorted(zoo.experts)
    ['add', 'reverse', 'sort', 'uppercase']
    """

    def build(tmp: Path, final: Path) -> Zoo:
        with build_env(threads=1):
            return _build_tiny(tmp, final, TINY_SEED, progress)

    return cached_build(TINY_NAME, cache_dir, force, build)
