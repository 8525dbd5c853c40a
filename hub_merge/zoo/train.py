"""Training and saving helpers shared by the zoo builders: batches, answer loss, a plain AdamW
loop, LoRA wrapping, cards, and a deterministic build environment.

The model sees prompt tokens then answer tokens then EOS; "answer-token loss" is the mean
cross-entropy over the answer tokens and EOS only.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _encode(tokenizer: Any, ex: dict[str, str]) -> tuple[list[int], list[int]]:
    """Token ids and labels of one example: prompt tokens are masked (-100) in the labels."""
    p = tokenizer(ex["prompt"], add_special_tokens=False)["input_ids"]
    a = tokenizer(ex["answer"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return p + a, [-100] * len(p) + a


def _collate(encoded: Sequence[tuple[list[int], list[int]]], pad: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    labels = torch.full((len(encoded), width), -100, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, (x, y) in enumerate(encoded):  # right padding: positions stay 0..n-1
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _batch(tokenizer: Any, examples: Sequence[dict[str, str]]) -> dict[str, torch.Tensor]:
    return _collate([_encode(tokenizer, ex) for ex in examples], _pad_id(tokenizer))


@torch.no_grad()
def _answer_loss(
    model: Any, tokenizer: Any, examples: Sequence[dict[str, str]], bs: int = 32
) -> float:
    """Mean cross-entropy over answer tokens (and EOS), token-weighted across ``examples``.

    Private: the training loop needs it; the public evaluator lives in ``hub_merge.evaluate``.
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), bs):
        batch = _batch(tokenizer, examples[i : i + bs])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        logp = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), labels, ignore_index=-100, reduction="sum"
        )
        total += float(logp)
        count += int((labels != -100).sum())
    model.train(was_training)
    return total / max(count, 1)


def train_model(
    model: Any,
    tokenizer: Any,
    examples: Sequence[dict[str, str]],
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    progress: Any = None,
) -> None:
    """A plain AdamW loop with a linear warm-down: deterministic given ``seed`` and thread count.

    Hand-written rather than ``transformers.Trainer``: a dozen lines, no accelerate/dataloader
    workers, and nothing that could make two builds differ.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - 0.9 * s / max(steps, 1))
    rng = random.Random(seed)
    encoded = [_encode(tokenizer, ex) for ex in examples]
    pad = _pad_id(tokenizer)
    model.train()
    for _ in range(steps):
        batch = _collate(rng.sample(encoded, min(batch_size, len(encoded))), pad)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if progress is not None:
            progress.update(1)
    model.eval()


def expert_card(
    title: str,
    *,
    base_model: str | None,
    relation: str | None,
    library: str,
    tags: list[str],
    body: str,
    license: str = "apache-2.0",
) -> str:
    import yaml

    meta: dict[str, Any] = {"license": license, "library_name": library, "tags": tags}
    if base_model:
        meta["base_model"] = base_model
        meta["base_model_relation"] = relation
    front = yaml.safe_dump(meta, sort_keys=False).strip()
    return f"---\n{front}\n---\n\n# {title}\n\n{body.strip()}\n"


def save_adapter(model: Any, folder: Path, base_final: Path) -> None:
    """Save a peft adapter whose config names the final (cached) base folder, not the temp one."""
    model.save_pretrained(str(folder))
    point_adapter_at(folder, base_final)


def point_adapter_at(folder: Path, base: Path) -> None:
    """Make the adapter in ``folder`` name ``base`` as its base model (peft loads it from there)."""
    cfg_path = folder / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(base)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def add_lora(model: Any, r: int) -> Any:
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=list(LORA_TARGETS), bias="none"
    )
    return get_peft_model(model, cfg)


@contextlib.contextmanager
def build_env(threads: int | None) -> Iterator[None]:
    """Pin torch's thread count (so builds are bit-identical whatever the caller set) and hush
    transformers' per-load progress bars; restore both afterwards."""
    from transformers.utils import logging as hf_logging

    old_threads = torch.get_num_threads()
    bars = hf_logging.is_progress_bar_enabled()
    if threads is not None:
        torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        if bars:
            hf_logging.enable_progress_bar()


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)
