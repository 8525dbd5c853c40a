"""Stream a recipe's merge into a model folder: read, merge and write overlap, one tensor at a time.

Everything that can be checked is checked before the first byte is written (method, parameters,
tensor names, shapes, adapters' base). Reading (and casting to the compute dtype) runs a few
tensors ahead in one thread, merging on the device in the calling thread, casting and writing in
a third behind a bounded queue, so the device rarely waits on the disk and memory stays at a few
tensors. Output goes to a temporary folder renamed into place at the end.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from ..errors import ConfigError, IncompatibleModelsError, MergeError
from ..layers import num_layers
from ..tensors import DEFAULT_SHARD_BYTES, CheckpointReader, ShardedWriter
from .inputs import CheckpointSource, TensorSource, adapters_untie_head, open_source
from .kernels import ARITHMETIC_KEY, DARE_RNG, DARE_RNG_KEY, uses_philox
from .memory import resolve_device
from .methods import TensorMerge, get_method, needs_base, uses_base, validate_parameters
from .recipe import MergeRecipe
from .registry import MERGEKIT, method_for
from .vocab import TOKENIZER_FILES, Vocabulary, build_vocabulary, check_shapes

# Files copied from the base (or the first model) so the output loads and tokenizes like it.
SIDE_FILES = ("config.json", "generation_config.json", *TOKENIZER_FILES)

_STR_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in _STR_DTYPES.items()}.get(dtype, "float32")


def _copy_side_files(
    writer: ShardedWriter,
    source: Path,
    out_dtype: torch.dtype | None,
    *,
    untied_head: bool = False,
    tokenizer: dict[str, bytes] | None = None,
    vocab_size: tuple[str, int] | None = None,
) -> None:
    """config.json (dtype, tied head, vocabulary size set), the generation config and the
    tokenizer files: the base's, or ``tokenizer`` (a merge that builds its own) in their place."""
    from .vocab import set_config_value

    for name in SIDE_FILES:
        path = source / name
        if not path.is_file() or (tokenizer is not None and name in TOKENIZER_FILES):
            continue
        data = path.read_bytes()
        if name == "config.json" and (out_dtype is not None or untied_head or vocab_size):
            cfg = json.loads(data)
            for key in ("torch_dtype", "dtype"):
                if key in cfg and out_dtype is not None:
                    cfg[key] = _dtype_name(out_dtype)
            if untied_head:  # the output stores its own lm_head (as PEFT's merge says too)
                cfg["tie_word_embeddings"] = False
                if isinstance(cfg.get("text_config"), dict):
                    cfg["text_config"]["tie_word_embeddings"] = False
            if vocab_size is not None:
                set_config_value(cfg, *vocab_size)
            data = json.dumps(cfg, indent=2).encode()
        writer.add_file(name, data)
    for name, data in (tokenizer or {}).items():
        writer.add_file(name, data)


def output_tokenizer(
    recipe: MergeRecipe, vocab: Vocabulary | None, donor: Path
) -> tuple[dict[str, bytes] | None, tuple[str, int] | None]:
    """The tokenizer files and (config key, vocabulary size) a merge writes; (None, None) when
    it copies the donor's files as they are (no tokenizer settings, no chat template)."""
    from ..tensors import is_adapter_folder
    from .vocab import donor_tokenizer, tokenizer_files, vocab_size_key

    # mergekit reads a LoRA input's tokenizer (and template) from its base (`base+lora`)
    leaves = [
        str(recipe.base) if recipe.base and is_adapter_folder(Path(m)) else m
        for m in recipe.leaves()
    ]
    if vocab is not None:
        files = tokenizer_files(vocab.tokenizer, recipe.chat_template, leaves)
        return files, (vocab_size_key(donor), vocab.size)
    if recipe.chat_template:  # mergekit saves the donor's tokenizer again, with the template
        return tokenizer_files(donor_tokenizer(str(donor)), recipe.chat_template, leaves), None
    return None, None


def refuse_tokenizer_settings(recipe: MergeRecipe) -> None:
    """A method hub-merge writes itself (not mergekit's family) builds no tokenizer: refused."""
    if recipe.tokenizer is not None or recipe.chat_template is not None:
        key = "tokenizer" if recipe.tokenizer is not None else "chat_template"
        raise ConfigError(
            f"`{key}` is built for mergekit's methods only, not {recipe.method!r}; drop it and "
            "set the tokenizer on the result."
        )


class _BackgroundWriter:
    """A thread writing merged tensors while the next ones are merged; bounded to cap memory."""

    def __init__(self, writer: ShardedWriter, maxsize: int = 4) -> None:
        self.writer = writer
        self.queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="hub-merge-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is not None:
                continue  # drain
            try:
                self.writer.write(*item)
            except BaseException as err:  # noqa: BLE001 - re-raised in the main thread
                self.error = err

    def put(self, name: str, tensor: torch.Tensor) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((name, tensor))

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


class _ReadAhead:
    """A thread reading the next tensors (all inputs of each) while the current one is merged.

    Bounded by ``depth`` tensors and by ``max_bytes`` held, so memory stays at a few tensors; every
    ``release_bytes`` read it closes the checkpoints' mmap handles, which otherwise keep every page
    read so far resident (RSS would grow to the size of all inputs).
    """

    def __init__(
        self,
        names: list[str],
        load: Callable[[str], tuple[list[torch.Tensor], torch.Tensor | None]],
        checkpoints: list,
        *,
        depth: int = 3,
        max_bytes: int = 1 << 30,
        release_bytes: int = 1 << 30,
    ) -> None:
        self.names, self.load, self.checkpoints = names, load, checkpoints
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.max_bytes, self.release_bytes = max_bytes, release_bytes
        self.held = 0
        self.cond = threading.Condition()
        self.stop = False
        self.thread = threading.Thread(target=self._run, name="hub-merge-read", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        since_release = 0
        try:
            for name in self.names:
                item = self.load(name)
                size = sum(t.numel() * t.element_size() for t in item[0]) + (
                    item[1].numel() * item[1].element_size() if item[1] is not None else 0
                )
                with self.cond:
                    while self.held > 0 and self.held + size > self.max_bytes and not self.stop:
                        self.cond.wait()
                    if self.stop:
                        return
                    self.held += size
                self.queue.put((name, item, size, None))
                since_release += size
                if since_release >= self.release_bytes:
                    for reader in self.checkpoints:
                        reader.release()
                    since_release = 0
        except BaseException as err:  # noqa: BLE001 - re-raised in the merging thread
            self.queue.put((None, None, 0, err))

    def next(self, name: str):
        got, item, size, err = self.queue.get()
        if err is not None:
            raise err
        assert got == name, (got, name)
        with self.cond:
            self.held -= size
            self.cond.notify_all()
        return item

    def close(self) -> None:
        with self.cond:
            self.stop = True
            self.cond.notify_all()
        while self.thread.is_alive():
            try:
                self.queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self.thread.join()


def _check_inputs(
    names: list[str], sources: list[TensorSource], vocab: Vocabulary | None = None
) -> None:
    for src in sources:
        have = set(src.names)
        missing = [n for n in names if n not in have]
        if missing:
            raise IncompatibleModelsError(
                f"{src.label} lacks {len(missing)} tensor(s), e.g. {missing[0]!r}: not the same architecture."
            )
        for n in names:
            a, b = tuple(src.shape(n)), tuple(sources[0].shape(n))
            if not check_shapes(vocab, n, a, b):
                vocab = (
                    " They have different vocabularies." if ("embed" in n or "lm_head" in n) else ""
                )
                raise IncompatibleModelsError(
                    f"Tensor {n!r} is {a} in {src.label} but {b} in {sources[0].label}.{vocab} "
                    "Only models of one architecture and size can be merged."
                )


def merge_to_folder(
    recipe: MergeRecipe,
    out: str | Path,
    *,
    device: str | torch.device = "auto",
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
    progress: bool = True,
    on_tensor: Callable[[str], None] | None = None,
) -> Path:
    """Merge per ``recipe`` into ``out`` (a model folder loadable by transformers).

    Args:
        recipe: what to merge; models are local folders (pull Hub refs first).
        out: output folder; must not exist unless ``overwrite``.
        device: ``"auto"`` (CUDA if present), ``"cpu"``, ``"cuda"``.
        max_shard_bytes: shard size limit; bigger outputs get an index.
        on_tensor: called after each tensor (tests use it to simulate an interruption).

    Raises:
        UnknownMethodError, ConfigError, IncompatibleModelsError: before anything is written.
        MergeError: the write failed (e.g. a full disk); nothing was left behind.
    """
    # mergekit's methods stream below (stream_to_folder); hub-merge's own write their own output
    if method_for(recipe.method) is not MERGEKIT:
        refuse_tokenizer_settings(recipe)
    return method_for(recipe.method).write(
        recipe,
        out,
        device=device,
        overwrite=overwrite,
        options={"max_shard_bytes": max_shard_bytes, "progress": progress, "on_tensor": on_tensor},
    )


def stream_to_folder(
    recipe: MergeRecipe,
    out: str | Path,
    *,
    device: str | torch.device = "auto",
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
    progress: bool = True,
    on_tensor: Callable[[str], None] | None = None,
) -> Path:
    """A mergekit-method recipe streamed into ``out``, one tensor at a time (see merge_to_folder)."""
    if recipe.slices:  # mergekit's layer slices: stacked and merged slice by slice
        from .slices import slices_to_folder

        return slices_to_folder(
            recipe.with_seed(),
            out,
            max_shard_bytes=max_shard_bytes,
            overwrite=overwrite,
            progress=progress,
        )
    if recipe.nested:
        raise ConfigError(
            "merge_to_folder merges folders; a recipe with recipes as inputs is merged in memory "
            "(hub_merge.merge.MergeSession.merge_recipe), or one step at a time."
        )
    recipe = recipe.with_seed()  # a random method gets a seed, recorded in the output's metadata
    dev = resolve_device(device)
    method = get_method(recipe.method)
    if needs_base(method) and recipe.base is None:
        raise ConfigError(f"Method {recipe.method!r} needs `base:`.")
    untie = recipe.base is not None and adapters_untie_head(
        CheckpointReader(recipe.base).names, [e.model for e in recipe.models]
    )  # a tied lm_head an adapter replaces: untied, as PEFT's merge does
    base_src = CheckpointSource(recipe.base, untie_head=untie) if recipe.base is not None else None
    sources = [open_source(e.model, base_src, untie_head=untie) for e in recipe.models]
    validate_parameters(
        method,
        recipe.parameters,
        [e.parameters for e in recipe.models],
        n_inputs=len(sources),
        has_base=base_src is not None,
    )
    base_in = base_src if (base_src is not None and uses_base(method)) else None
    reference = base_src or sources[0]
    names = reference.names
    config_dir = Path(recipe.base) if recipe.base is not None else Path(recipe.models[0].model)
    vocab, by_input = None, {}
    if recipe.tokenizer is not None:
        # mergekit's inputs of every tensor: the models as listed, then the base unless listed
        by_input = {e.model: s for e, s in zip(recipe.models, sources, strict=True)}
        if recipe.base is not None and base_src is not None:
            by_input.setdefault(recipe.base, base_src)
        leaves = ([recipe.base] if recipe.base else []) + list(by_input)
        vocab = build_vocabulary(
            recipe.tokenizer, recipe.base, list(dict.fromkeys(leaves)), str(config_dir)
        )
    _check_inputs(names, ([base_in] if base_in else []) + sources, vocab)
    first_float = next((n for n in names if reference.dtype(n).is_floating_point), None)
    in_dtype = reference.dtype(first_float) if first_float else torch.float32
    out_dtype = _STR_DTYPES[recipe.dtype] if recipe.dtype else in_dtype
    layout = {
        n: (
            vocab.output_shape(n, reference.shape(n))
            if vocab is not None and n in vocab.axes
            else reference.shape(n),
            out_dtype if reference.dtype(n).is_floating_point else reference.dtype(n),
        )
        for n in names
    }
    n_layers = num_layers(names, config=config_dir)
    op = TensorMerge(
        method,
        recipe.parameters,
        [e.parameters for e in recipe.models],
        n_layers,
        recipe.seed,
        compute_dtype=recipe.compute_torch_dtype(),
        exact_mergekit=recipe.exact_mergekit,
    )
    op.check(names)  # every tensor's parameters, as plan checks them: before a weight is read
    meta = {
        "hub_merge_recipe": recipe.canonical_json(),
        ARITHMETIC_KEY: op.arithmetic,
        **({DARE_RNG_KEY: DARE_RNG} if uses_philox(op.kernel) else {}),
    }

    try:
        writer = ShardedWriter(
            out, layout, max_shard_bytes=max_shard_bytes, metadata=meta, overwrite=overwrite
        )
    except FileExistsError as err:
        raise ConfigError(str(err)) from None
    except OSError as err:
        raise MergeError(f"Cannot create the output beside {out}: {err}") from err

    # Inputs are cast to the compute dtype in the read-ahead thread (mergekit would cast them
    # first thing anyway) and results to the output dtype in the write-behind thread, so the
    # merging thread only merges.
    cast_to = op.compute_dtype

    def load(name: str):
        def one(src: TensorSource) -> torch.Tensor:
            t = src.get(name, device=dev)
            return t.to(cast_to) if (cast_to is not None and t.is_floating_point()) else t

        if vocab is not None and name in vocab.axes:  # one row per output token, each input
            rows = vocab.permute(name, {m: one(src) for m, src in by_input.items()})
            base_t = rows[recipe.base] if base_in is not None else None
            return [rows[e.model] for e in recipe.models], base_t
        base_t = one(base_in) if base_in is not None else None
        return [one(s) for s in sources], base_t

    checkpoints = [
        s.reader
        for s in ([base_in] if base_in else []) + sources
        if isinstance(s, CheckpointSource)
    ]
    bg = None
    ahead = None
    try:
        files, vocab_size = output_tokenizer(recipe, vocab, config_dir)
        _copy_side_files(
            writer,
            config_dir,
            out_dtype,
            untied_head=untie,
            tokenizer=files,
            vocab_size=vocab_size,
        )
        bg = _BackgroundWriter(writer)
        ahead = _ReadAhead(names, load, checkpoints)
        iterator = names
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(names, desc=f"merge ({recipe.method})", unit="tensor", leave=False)
        with torch.no_grad():
            for name in iterator:
                tensors, base_t = ahead.next(name)
                if not tensors[0].is_floating_point():
                    merged = base_t if base_t is not None else tensors[0]
                else:
                    merged = op(name, tensors, base_t)
                bg.put(name, merged)
                del tensors, base_t, merged
                if on_tensor is not None:
                    on_tensor(name)
        ahead.close()
        ahead = None
        bg.close()
        bg = None
        return writer.finalize()
    except OSError as err:
        _abort(bg, writer, ahead)
        raise MergeError(
            f"Writing the merge to {out} failed ({err}); nothing was left behind. Free disk space and retry."
        ) from err
    except BaseException:
        _abort(bg, writer, ahead)
        raise


def _abort(
    bg: _BackgroundWriter | None, writer: ShardedWriter, ahead: _ReadAhead | None = None
) -> None:
    if ahead is not None:
        ahead.close()
    if bg is not None:
        try:
            bg.close()
        except BaseException:  # noqa: BLE001 - the original error matters more
            pass
    writer.abort()


def write_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    out: str | Path,
    *,
    config_from: str | Path,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write an in-memory state dict as a model folder (config/tokenizer from ``config_from``)."""
    layout = {
        n: (tuple(t.shape), (dtype or t.dtype) if t.is_floating_point() else t.dtype)
        for n, t in state_dict.items()
    }
    try:
        writer = ShardedWriter(
            out, layout, max_shard_bytes=max_shard_bytes, metadata=metadata, overwrite=overwrite
        )
    except FileExistsError as err:
        raise ConfigError(str(err)) from None
    try:
        first = next((t.dtype for t in state_dict.values() if t.is_floating_point()), None)
        _copy_side_files(writer, Path(config_from), dtype or first)
        for n, t in state_dict.items():
            writer.write(n, t)
        return writer.finalize()
    except OSError as err:
        writer.abort()
        raise MergeError(f"Writing {out} failed ({err}); nothing was left behind.") from err
    except BaseException:
        writer.abort()
        raise


__all__ = ["merge_to_folder", "stream_to_folder", "write_state_dict"]
