"""mergekit's tokenizer options in the streaming engine: ``tokenizer``/``tokenizer_source`` and
``chat_template``.

A merge with a tokenizer builds the output's vocabulary first (``base``: the base's, stripped of
tokens past its embedding; ``union``: every input's tokens; or one model's), then gives every
token-indexed tensor (embeddings, the head) one row per output token before the method merges
it: each input's own row where it has the token, else the row the ``tokens`` settings or
mergekit's defaults choose (the only model that has it, the base's, the mean of those that have
it, or zeros), padded to ``pad_to_multiple_of`` with the mean row. The output's ``vocab_size``
and tokenizer files follow.

What is mergekit's own code, called as a library: the stripped base tokenizer
(``get_stripped_tokenizer``), the union (``build_union_tokenizer``), the vocabulary sizes
(``get_vocab_size``), the rows of every token-indexed tensor (``PermutedVocabulary``), which
tensors are token-indexed (its architecture tables) and the chat template's lookup
(``_set_chat_template``, which reads its built-in templates). What is written here by hand and
why is said where it is.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import ConfigError

# Files a saved tokenizer may consist of: a merge that builds its own tokenizer writes the ones
# save_pretrained gives and copies none of these from the base.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)


class TokenizerSpec(BaseModel):
    """mergekit's ``tokenizer:`` (``tokenizer_source: X`` is ``tokenizer: {source: X}``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(
        default="union",
        description="`base` (the base's tokenizer), `union` (every input's tokens) or a model.",
    )
    tokens: dict[str, dict[str, Any]] | None = Field(
        default=None,
        description="Per-token embedding sources, as mergekit's `tokens` (source, force).",
    )
    pad_to_multiple_of: int | None = Field(default=None, gt=0)

    @field_validator("tokens")
    @classmethod
    def _mergekit_token_settings(
        cls, value: dict[str, dict[str, Any]] | None
    ) -> dict[str, dict[str, Any]] | None:
        if value is None:
            return None
        from mergekit.tokenizer.config import TokenEmbeddingConfig
        from pydantic import ValidationError

        out = {}
        for token, setting in value.items():
            setting = setting or {}
            try:
                TokenEmbeddingConfig.model_validate(setting)
            except (ValidationError, ValueError) as err:
                raise ValueError(
                    f"tokens[{token!r}] is not a mergekit token setting ({{source: MODEL}}, "
                    "{source: {kind: zero}}, {source: {kind: model_token, model: M, token: T}}, "
                    f"force: true): {str(err).splitlines()[0]}"
                ) from None
            out[token] = dict(setting)
        return out

    def models(self) -> list[str]:
        """Every model this spec names (its source, the tokens' sources)."""
        out = [] if self.source in ("base", "union") else [self.source]
        for setting in (self.tokens or {}).values():
            src = setting.get("source")
            model = src.get("model") if isinstance(src, dict) else src
            if isinstance(model, str) and model not in out:
                out.append(model)
        return out

    def with_models(self, local: Any) -> TokenizerSpec:
        """This spec with every model it names passed through ``local`` (pulled folders)."""

        def one(src: Any) -> Any:
            if isinstance(src, str):
                return local(src)
            if isinstance(src, dict) and isinstance(src.get("model"), str):
                return {**src, "model": local(src["model"])}
            return src

        tokens = None
        if self.tokens is not None:
            tokens = {t: {**s, "source": one(s.get("source"))} for t, s in self.tokens.items()}
        source = self.source if self.source in ("base", "union") else local(self.source)
        return self.model_copy(update={"source": source, "tokens": tokens})


def vocabulary_axes(folder: str | Path) -> dict[str, int]:
    """Tensor name -> its token axis, for every token-indexed tensor of the model in ``folder``.

    mergekit's architecture tables say which tensors are token-indexed (its ``vocabulary_axis``);
    for an architecture it has no table for, its own inference from the transformers model (the
    input and output embeddings) is asked, as mergekit-yaml does.
    """
    from mergekit.architecture import arch_info_for_config
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"A tokenizer merge needs {folder}'s config.json to find its embeddings: {err}"
        ) from None
    arch = arch_info_for_config(cfg) if getattr(cfg, "architectures", None) else None
    axes: dict[str, int] = {}
    if arch is not None:
        for w in arch.all_weights(cfg):
            if w.vocabulary_axis is not None:
                for name in (w.name, *(w.aliases or ())):
                    axes[name] = w.vocabulary_axis
        return axes
    from mergekit.architecture.auto import get_transformers_info
    from mergekit.common import ModelReference
    from mergekit.options import MergeOptions

    found = get_transformers_info(ModelReference.parse(str(folder)), MergeOptions())[2]
    if not found:
        raise ConfigError(
            f"Cannot tell which tensors of {folder} are indexed by token (mergekit knows no "
            f"architecture {cfg.architectures}): drop the tokenizer settings."
        )
    return dict(found)


def vocab_size_key(folder: str | Path) -> str:
    """The config key of the vocabulary size (``text_config.vocab_size`` for some), mergekit's."""
    from mergekit.architecture import arch_info_for_config
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(folder))
    arch = arch_info_for_config(cfg) if getattr(cfg, "architectures", None) else None
    return (arch.vocab_size_config_key if arch is not None else None) or "vocab_size"


def set_config_value(cfg: dict[str, Any], key: str, value: Any) -> None:
    """``key`` (dotted for nested configs) set in a config.json mapping, as mergekit sets it."""
    *path, last = key.split(".")
    for part in path:
        cfg = cfg.setdefault(part, {})
    cfg[last] = value


class _IdOrderedVocab:
    """A tokenizer whose ``get_vocab()`` lists tokens by id.

    Why: fast tokenizers return their vocabulary from a Rust HashMap, in an order that changes
    from one process to the next, and mergekit's union numbers new tokens in that order, so
    mergekit-yaml gives the same tokens other ids on every run. By id, the union is one of the
    orders mergekit can give, every time (a recipe, its hash and a card replay).
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer

    def get_vocab(self) -> dict[str, int]:
        return dict(sorted(self._tok.get_vocab().items(), key=lambda kv: kv[1]))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)


@dataclass
class Vocabulary:
    """The output's tokenizer and how each input's token rows map onto it."""

    tokenizer: Any  # a transformers tokenizer
    info: Any  # mergekit's TokenizerInfo (tokenizer, permutations, original vocabularies)
    keys: dict[str, Any]  # input folder (or adapter) -> its mergekit ModelReference
    base: Any  # the base's ModelReference, or None
    axes: dict[str, int]  # token-indexed tensor -> its token axis
    size: int  # rows of each token-indexed tensor (the vocabulary, padded)
    spec: TokenizerSpec

    def permute(self, name: str, tensors: Mapping[str, Any]) -> dict[str, Any]:
        """Each input's ``name`` with one row per output token, by mergekit's own code.

        ``tensors`` maps input (folder, as given to :func:`build_vocabulary`) to its tensor,
        in mergekit's order of the tensor's inputs.
        """
        from mergekit.common import ImmutableMap
        from mergekit.io.tasks import GatherTensors
        from mergekit.tokenizer import BuildTokenizer, PermutedVocabulary
        from mergekit.tokenizer.config import TokenEmbeddingConfig

        tokens = {
            t: TokenEmbeddingConfig.model_validate(s) for t, s in (self.spec.tokens or {}).items()
        }
        # PermutedVocabulary is a task of mergekit's graph; its execute() is the whole
        # computation and reads no other task, so it runs here on tensors this engine read.
        task = PermutedVocabulary(
            gather_tensors=GatherTensors(weight_info=ImmutableMap({})),
            tokenizer_task=BuildTokenizer(
                base_model=self.base,
                referenced_models=tuple(self.keys.values()),
                tokenizer_source="base",
                add_tokens=None,
            ),
            tokens=ImmutableMap(tokens),
            pad_to_multiple_of=self.spec.pad_to_multiple_of,
            base_model=self.base,
            vocabulary_axis=self.axes[name],
        )
        keyed = {self.keys[m]: t for m, t in tensors.items()}
        try:
            out = task.execute(tokenizer_info=self.info, tensors=keyed)
        except NotImplementedError:  # mergekit's answer to a setting without a source
            raise ConfigError(
                "tokenizer.tokens: a token some input lacks needs a `source` (a model, "
                "{kind: zero} or {kind: model_token, ...})."
            ) from None
        except (AssertionError, ValueError, KeyError) as err:
            raise ConfigError(f"tokenizer: {name}: {err}") from None
        back = {v: k for k, v in self.keys.items()}
        return {back[k]: t for k, t in out.items()}

    def output_shape(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = list(shape)
        shape[self.axes[name]] = self.size
        return tuple(shape)


def input_key(model: str, base: str | None) -> Any:
    """A merge input as mergekit names it: an adapter is ``base+adapter`` (its tokenizer and
    vocabulary are its base's), a full model its folder."""
    from mergekit.common import ModelReference

    from ..tensors import is_adapter_folder

    if base is not None and is_adapter_folder(Path(model)):
        return ModelReference.parse(f"{base}+{model}")
    return ModelReference.parse(model)


def build_vocabulary(
    spec: TokenizerSpec, base: str | None, inputs: list[str], reference: str
) -> Vocabulary:
    """The output's tokenizer and every input's token permutation (mergekit's ``build_tokenizer``).

    ``inputs``: every model the merge reads (base first when there is one), as folders.
    ``reference``: the full model whose architecture says which tensors are token-indexed.

    Written by hand after mergekit's ``build_tokenizer``, whose loop is repeated here for two
    reasons: it takes its models from a set (``referenced_models()``: another order each run),
    and it reads vocabularies in a Rust HashMap's order (see ``_IdOrderedVocab``). The pieces
    it calls are mergekit's own; the permutations are computed as it computes them.
    """
    import transformers
    from mergekit.common import ModelReference
    from mergekit.tokenizer.build import (
        TokenizerInfo,
        build_union_tokenizer,
        get_stripped_tokenizer,
        get_vocab_size,
    )

    keys = {m: input_key(m, base) for m in inputs}
    base_key = keys[base] if base is not None else keys[inputs[0]]

    def load(ref: Any) -> Any:
        try:
            return transformers.AutoTokenizer.from_pretrained(ref.model.path)
        except (OSError, ValueError, TypeError) as err:
            raise ConfigError(
                f"tokenizer: cannot load the tokenizer of {ref.model.path} "
                f"({str(err).splitlines()[0]}); a tokenizer merge needs each input's tokenizer "
                "files."
            ) from None

    for token, setting in (spec.tokens or {}).items():  # before any tokenizer is read
        src = setting.get("source")
        named = src.get("model") if isinstance(src, dict) else src
        if isinstance(named, str) and ModelReference.parse(named) not in keys.values():
            raise ConfigError(
                f"tokenizer.tokens[{token!r}] takes its embedding from {named}, which is not an "
                "input of the merge (name base_model or one of models)."
            )
    try:
        base_tok = get_stripped_tokenizer(base_key.model)
    except (OSError, ValueError, TypeError, RuntimeError) as err:
        raise ConfigError(
            f"tokenizer: cannot load the tokenizer of {base_key.model.path} "
            f"({str(err).splitlines()[0]}); a tokenizer merge needs the base's tokenizer files."
        ) from None
    tokenizers = {base_key: base_tok}
    for key in keys.values():
        if key not in tokenizers:
            tokenizers[key] = load(key)
    if spec.source == "base":
        out = base_tok
    elif spec.source == "union":
        out = build_union_tokenizer(
            base_tok, {k: _IdOrderedVocab(t) for k, t in tokenizers.items()}
        )
    else:
        out = load(ModelReference.parse(spec.source))
    existing = set(out.get_vocab())
    for token in spec.tokens or {}:
        if token not in existing:
            out.add_tokens(token)
            existing.add(token)
    vocab_out = out.get_vocab()
    permutations = {}
    for key in keys.values():
        model_vocab = tokenizers[key].get_vocab()
        size = get_vocab_size(key.model, trust_remote_code=False) or len(model_vocab)
        p = {}
        for token, new_idx in vocab_out.items():
            # A token past the model's embedding counts as absent from it: mergekit leaves it
            # out of the permutation and then fails on the missing entry.
            known = token in model_vocab and model_vocab[token] < size
            p[new_idx] = model_vocab[token] if known else -1
        permutations[key] = p
    for token, setting in (spec.tokens or {}).items():  # mergekit asserts this mid-merge
        src = setting.get("source")
        if isinstance(src, dict) and src.get("kind") == "model_token" and src.get("token"):
            vocab = tokenizers[ModelReference.parse(src["model"])].get_vocab()
            if src["token"] not in vocab:
                raise ConfigError(
                    f"tokenizer.tokens[{token!r}] takes the row of {src['token']!r} in "
                    f"{src['model']}, whose tokenizer has no such token."
                )
    info = TokenizerInfo(
        tokenizer=out,
        permutations=permutations,
        original_vocabs={k: t.get_vocab() for k, t in tokenizers.items()},
    )
    size = len(vocab_out)
    pad = spec.pad_to_multiple_of
    if pad and size % pad:
        size += pad - size % pad
    return Vocabulary(
        tokenizer=out,
        info=info,
        keys=keys,
        base=keys[base] if base is not None else None,
        axes=vocabulary_axes(reference),
        size=size,
        spec=spec,
    )


def check_shapes(
    vocab: Vocabulary | None, name: str, a: tuple[int, ...], b: tuple[int, ...]
) -> bool:
    """Whether two inputs' ``name`` may differ as they do: only along a token axis."""
    if vocab is None or name not in vocab.axes or len(a) != len(b):
        return tuple(a) == tuple(b)
    axis = vocab.axes[name]
    return all(x == y for i, (x, y) in enumerate(zip(a, b, strict=True)) if i != axis)


def tokenizer_files(
    tokenizer: Any, chat_template: str | None, referenced: list[str]
) -> dict[str, bytes]:
    """The output's tokenizer files: ``tokenizer`` (with ``chat_template`` set) as
    save_pretrained writes them, as mergekit-yaml writes its output's."""
    if chat_template:
        set_chat_template(tokenizer, chat_template, referenced)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}


def donor_tokenizer(donor: str) -> Any:
    """The donor's tokenizer, loaded to be saved again with a chat template (mergekit does the
    same when a config sets ``chat_template`` without a tokenizer)."""
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(donor)
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(
            f"chat_template: cannot load the tokenizer of {donor} ({str(err).splitlines()[0]}); "
            "the template is saved with it."
        ) from None


def set_chat_template(tokenizer: Any, template: str, referenced: list[str]) -> None:
    """``template`` set on ``tokenizer`` by mergekit's rules: ``auto`` (the inputs' most common
    template), a built-in name (``chatml``, ``llama3``, ...) or a Jinja template itself.

    Written by hand after mergekit's ``_set_chat_template`` (private to ``mergekit.merge``, so
    not imported here): the same rules, the same built-in templates (mergekit's own files).
    """
    text = _builtin_or_text(template)
    if text is None:  # auto: the plurality of the inputs' templates, as mergekit picks it
        from collections import Counter

        import transformers

        found = []
        for model in referenced:
            try:
                tpl = transformers.AutoTokenizer.from_pretrained(model).chat_template
            except (OSError, ValueError, TypeError):
                continue  # mergekit skips an input whose tokenizer does not load
            if isinstance(tpl, dict):
                tpl = tpl.get("default")
            if tpl:
                found.append(tpl.strip())
        if not found:
            return
        text = Counter(found).most_common(1)[0][0]
    tokenizer.chat_template = text


def _builtin_or_text(template: str) -> str | None:
    """A built-in template's text, the template itself, or None for ``auto``; ConfigError for
    anything else (mergekit's RuntimeError, said with the names to use)."""
    import importlib.resources

    from mergekit._data import chat_templates

    if template == "auto":
        return None
    if len(template) < 256 and "\n" not in template and "{" not in template:
        path = importlib.resources.files(chat_templates).joinpath(template + ".jinja")
        if path.is_file():
            return path.read_text()
    if len(template) < 20 or "{" not in template:
        names = sorted(
            p.name.removesuffix(".jinja")
            for p in importlib.resources.files(chat_templates).iterdir()
            if p.name.endswith(".jinja")
        )
        raise ConfigError(
            f"chat_template {template!r} is neither a built-in template ({', '.join(names)}), "
            "`auto`, nor a Jinja template."
        )
    return template


def check_chat_template(template: str) -> None:
    """The template's mergekit rules, before any tokenizer is read (ConfigError, one line)."""
    _builtin_or_text(template)


__all__ = [
    "TOKENIZER_FILES",
    "TokenizerSpec",
    "Vocabulary",
    "build_vocabulary",
    "check_chat_template",
    "check_shapes",
    "donor_tokenizer",
    "set_config_value",
    "tokenizer_files",
    "vocab_size_key",
    "vocabulary_axes",
]
