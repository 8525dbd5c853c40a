"""The merge recipe: exactly what was merged, as data.

A recipe is what a card shows, what a cache is keyed by (``recipe_hash``) and what the CLI reads.
It is the one recipe type of the package: a search's candidate is a recipe whose inputs (``base``
and each model) may themselves be recipes, so a merge of merges is one nested value, and an
original expert is the *leaf* recipe ``passthrough`` of one model (``MergeRecipe.leaf``). A leaf
used as an input collapses to its model string, so ``merge(leaf(a), leaf(b))`` and
``merge(a, b)`` are the same recipe with the same hash.
Parameter values use mergekit's setting syntax so a recipe exports to an equivalent
``mergekit-yaml`` config one-to-one: a scalar, a *gradient* (a list of numbers interpolated across
the layers), or a list of ``{filter, value}`` conditions matched by substring of the tensor name,
first match wins (``filter`` omitted or ``"*"`` = everything else).

Example (the greedy search's default step)::

    method: slerp
    base: org/parent-a
    models: [{model: org/parent-b}]
    parameters:
      t:
        - {filter: self_attn, value: [0, 0.5, 0.3, 0.7, 1]}
        - {filter: mlp, value: [1, 0.5, 0.7, 0.3, 0]}
        - {value: 0.5}
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ..errors import ConfigError
from .vocab import TokenizerSpec

Scalar = bool | int | float | str
ScalarOrGradient = Scalar | list[Scalar]


class Condition(BaseModel):
    """One per-tensor override: ``value`` applies to tensors whose name contains ``filter``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    value: ScalarOrGradient
    filter: str | None = None


Setting = ScalarOrGradient | list[Condition]

DTYPES = ("float32", "float16", "bfloat16")
# "input": compute in the inputs' own dtype, as mergekit does when its config names no `dtype`.
COMPUTE_DTYPES = (*DTYPES, "input")
LEAF_METHOD = "passthrough"  # mergekit's identity method: one model, unchanged
# Methods that draw random numbers: a recipe using one carries a seed, so its tensors are fixed.
# DARE and DELLA draw their drop masks; arcee_fusion samples 1M elements of a bigger tensor to
# estimate its quantiles. (breadcrumbs and ties rank magnitudes: deterministic, no seed needed.)
RANDOM_METHODS = frozenset({"dare_ties", "dare_linear", "della", "della_linear", "arcee_fusion"})


class ModelEntry(BaseModel):
    """One merge input (a model folder/ref, a LoRA adapter, or a nested recipe) and its parameters."""

    model_config = ConfigDict(extra="forbid")

    model: str | MergeRecipe = Field(
        description="Hub reference (org/name@rev), local folder (may be a LoRA adapter), or a "
        "recipe whose result is the input."
    )
    parameters: dict[str, Setting] = Field(default_factory=dict)

    @field_validator("model", mode="after")
    @classmethod
    def _leaf_as_model(cls, value: str | MergeRecipe) -> str | MergeRecipe:
        return value.as_input() if isinstance(value, MergeRecipe) else value


class SliceSource(BaseModel):
    """Layers ``[start, stop)`` of one model, as mergekit's ``slices[].sources[]`` names them."""

    model_config = ConfigDict(extra="forbid")

    model: str
    layer_range: tuple[int, int]
    parameters: dict[str, Setting] = Field(default_factory=dict)

    @field_validator("layer_range")
    @classmethod
    def _ordered(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not 0 <= value[0] < value[1]:
            raise ValueError(
                f"layer_range {list(value)} must be [start, stop) with 0 <= start < stop"
            )
        return value


class OutputSlice(BaseModel):
    """A run of output layers: its sources (same number of layers each) merged layer by layer."""

    model_config = ConfigDict(extra="forbid")

    sources: list[SliceSource] = Field(min_length=1)
    parameters: dict[str, Setting] = Field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return self.sources[0].layer_range[1] - self.sources[0].layer_range[0]


class MergeRecipe(BaseModel):
    """Method, inputs and parameters of one merge; YAML in and out, hashable for caching."""

    model_config = ConfigDict(extra="forbid")

    method: str
    base: str | MergeRecipe | None = Field(
        default=None,
        description="Base model (required by task-vector methods and adapters), or a recipe.",
    )
    models: list[ModelEntry]
    parameters: dict[str, Setting] = Field(default_factory=dict)
    dtype: str | None = Field(default=None, description="Output dtype; default: the inputs' dtype.")
    seed: int | None = Field(default=None, description="Seed for random methods (DARE, DELLA).")
    compute_dtype: str | None = Field(
        default=None,
        description="Arithmetic dtype (mergekit's `dtype`); default float32; `input`: the inputs'.",
    )
    exact_mergekit: bool = Field(
        default=False,
        description="Run mergekit's own arithmetic (bit identity, its sort's tie order and DARE "
        "draws) instead of hub-merge's linear-time sparsification for ties/dare/breadcrumbs/della "
        "and its Philox DARE masks.",
    )
    tokenizer: TokenizerSpec | None = Field(
        default=None,
        description="mergekit's tokenizer settings: the output's vocabulary (base, union or a "
        "model's), per-token embedding sources, padding; token-indexed tensors follow it.",
    )
    chat_template: str | None = Field(
        default=None,
        description="mergekit's chat_template: a built-in name (chatml, llama3, ...), `auto` or "
        "a Jinja template, saved with the output's tokenizer.",
    )
    slices: list[OutputSlice] | None = Field(
        default=None,
        description="mergekit's layer slices: output layers built slice by slice from layer "
        "ranges of the sources (passthrough stacking, per-slice merges); `models` then lists "
        "each source model once.",
    )

    @model_validator(mode="before")
    @classmethod
    def _models_of_slices(cls, data: Any) -> Any:
        # A sliced recipe's inputs are its slices' models: `models` lists each once, so the
        # plan, the hash's inputs and the card's lineage see every parent.
        if isinstance(data, dict) and data.get("slices") and not data.get("models"):
            seen: list[str] = []
            for sl in data["slices"]:
                for src in (sl.get("sources") or []) if isinstance(sl, dict) else []:
                    model = src.get("model") if isinstance(src, dict) else None
                    if isinstance(model, str) and model not in seen and model != data.get("base"):
                        seen.append(model)
            data = {**data, "models": [{"model": m} for m in seen] or [{"model": data.get("base")}]}
        return data

    @model_validator(mode="after")
    def _slices_agree(self) -> MergeRecipe:
        for i, sl in enumerate(self.slices or []):
            lengths = {s.layer_range[1] - s.layer_range[0] for s in sl.sources}
            if len(lengths) != 1:
                raise ValueError(
                    f"slices[{i}]: every source must give the same number of layers (got "
                    f"{sorted(lengths)}), as mergekit requires"
                )
        return self

    @field_validator("models", mode="before")
    @classmethod
    def _models_as_entries(cls, value: Any) -> Any:
        # Allow the shorthand `models: [org/a, org/b]` (and recipes as bare inputs).
        if isinstance(value, list):
            return [{"model": v} if isinstance(v, (str, MergeRecipe)) else v for v in value]
        return value

    @field_validator("base", mode="after")
    @classmethod
    def _leaf_as_base(cls, value: str | MergeRecipe | None) -> str | MergeRecipe | None:
        return value.as_input() if isinstance(value, MergeRecipe) else value

    # --- nesting ----------------------------------------------------------------------------

    @classmethod
    def leaf(cls, model: str) -> MergeRecipe:
        """The recipe of one unmerged model (an original expert as a search candidate)."""
        return cls(method=LEAF_METHOD, models=[ModelEntry(model=model)])

    @property
    def is_leaf(self) -> bool:
        return (
            self.method == LEAF_METHOD
            and self.base is None
            and len(self.models) == 1
            and isinstance(self.models[0].model, str)
            and not self.models[0].parameters
            and not self.parameters
            and self.dtype is None
            and self.slices is None
            and self.tokenizer is None
            and self.chat_template is None
        )

    def as_input(self) -> str | MergeRecipe:
        """How this recipe appears as another recipe's input: a leaf is its model string."""
        return self.models[0].model if self.is_leaf else self  # type: ignore[return-value]

    def inputs(self) -> list[str | MergeRecipe]:
        """Base (when any) then each model: the direct inputs of this step."""
        return ([self.base] if self.base is not None else []) + [e.model for e in self.models]

    def leaves(self) -> list[str]:
        """Every model string this recipe reads, recursively, each once, in order."""
        out: list[str] = []
        for item in self.inputs():
            for leaf in item.leaves() if isinstance(item, MergeRecipe) else [item]:
                if leaf not in out:
                    out.append(leaf)
        return out

    @property
    def nested(self) -> bool:
        return any(isinstance(i, MergeRecipe) for i in self.inputs())

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str | None) -> str | None:
        if value is not None and value not in DTYPES:
            raise ValueError(f"dtype {value!r} is not one of {', '.join(DTYPES)}")
        return value

    @field_validator("compute_dtype")
    @classmethod
    def _known_compute_dtype(cls, value: str | None) -> str | None:
        if value is not None and value not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype {value!r} is not one of {', '.join(COMPUTE_DTYPES)}")
        return value

    def with_seed(self, seed: int | None = None) -> MergeRecipe:
        """This recipe with a seed wherever a random method has none (nested steps too).

        Why: without one, DARE/DELLA masks come from torch's global generator and every run
        gives other tensors, so a recipe recorded in an output or a card would not replay. The
        drawn seed becomes part of the recipe (its hash, the output's metadata), so it does.
        ``seed`` fixes the value drawn (tests); default: a fresh one from ``secrets``.
        """
        import secrets

        def fill(item: str | MergeRecipe | None) -> str | MergeRecipe | None:
            return item.with_seed(seed) if isinstance(item, MergeRecipe) else item

        update: dict[str, Any] = {}
        if self.method in RANDOM_METHODS and self.seed is None:
            update["seed"] = secrets.randbelow(2**31) if seed is None else seed
        if self.nested:
            update["base"] = fill(self.base)
            update["models"] = [e.model_copy(update={"model": fill(e.model)}) for e in self.models]
        return self.model_copy(update=update) if update else self

    def merge_groups(self, uses_base: bool) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
        """(global parameters, per-input parameters) of each group of inputs merged together.

        One group for ``models``; one per slice for ``slices``, whose parameters are the
        slice's over the recipe's and whose inputs are its sources but the base (when the
        method takes the base, mergekit keys it by model among the sources).
        """
        if not self.slices:
            return [(dict(self.parameters), [dict(e.parameters) for e in self.models])]
        return [
            (
                {**self.parameters, **sl.parameters},
                [
                    dict(s.parameters)
                    for s in sl.sources
                    if not (uses_base and self.base is not None and s.model == self.base)
                ],
            )
            for sl in self.slices
        ]

    def unseeded_random_methods(self) -> list[str]:
        """Random methods of this recipe (nested steps too) that name no seed."""
        out = [self.method] if self.method in RANDOM_METHODS and self.seed is None else []
        for item in self.inputs():
            if isinstance(item, MergeRecipe):
                out += [m for m in item.unseeded_random_methods() if m not in out]
        return out

    # --- YAML / JSON ------------------------------------------------------------------------

    @classmethod
    def from_yaml(cls, text_or_path: str | Path) -> MergeRecipe:
        """Parse a recipe from YAML text or a file; errors become :class:`ConfigError`."""
        text = str(text_or_path)
        if isinstance(text_or_path, Path) or (("\n" not in text) and Path(text).is_file()):
            path = Path(text_or_path)
            if not path.is_file():
                raise ConfigError(f"Recipe file {path} does not exist.")
            text = path.read_text()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"Recipe is not valid YAML: {err}") from err
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> MergeRecipe:
        """A recipe from hub-merge's own mapping or from a mergekit config as written."""
        from .mergekit_config import (
            from_mergekit,
            is_mergekit_config,
            is_mergekit_moe_config,
            moe_message,
        )

        if not isinstance(data, dict):
            raise ConfigError("A recipe must be a mapping with at least `method` and `models`.")
        if is_mergekit_moe_config(data):
            raise ConfigError(moe_message(data))
        if is_mergekit_config(data):
            data = from_mergekit(data)
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(one_line_error(err)) from None

    def to_dict(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude_none=True)
        if not self.exact_mergekit:  # the default: older recipes (and their hashes) stay equal
            del data["exact_mergekit"]
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def compute_torch_dtype(self) -> Any:
        """The arithmetic dtype for ``merge_tensors`` (None: the inputs' own, mergekit-style)."""
        import torch

        if self.compute_dtype == "input":
            return None
        return getattr(torch, self.compute_dtype or "float32")

    def recipe_hash(self) -> str:
        """Stable sha256 of the canonical JSON: equal recipes, equal hash (cache key)."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def to_mergekit_yaml(self, *, input_dtype: str | None = None) -> str:
        """The equivalent ``mergekit-yaml`` config (how a card says to reproduce this merge).

        hub-merge computes in float32 and writes ``dtype`` (default: the inputs' dtype), which
        is mergekit's ``dtype: float32`` + ``out_dtype``. A LoRA input keeps its folder; mergekit
        spells an adapter on a base as ``base+adapter``.
        """
        from .. import tensors

        if self.nested:
            raise ConfigError(
                "A nested recipe is several mergekit steps; export each step (the card does)."
            )

        def ref(model: str) -> str:
            if self.base and tensors.is_adapter_folder(model):
                return f"{self.base}+{model}"
            return model

        config: dict[str, Any] = {"merge_method": self.method}
        if self.base is not None:
            config["base_model"] = self.base
        models = []
        for entry in self.models:
            item: dict[str, Any] = {"model": ref(entry.model)}
            if entry.parameters:
                item["parameters"] = _settings_json(entry.parameters)
            models.append(item)
        if self.slices:
            config["slices"] = [
                {
                    "sources": [
                        {
                            "model": src.model,
                            "layer_range": list(src.layer_range),
                            **(
                                {"parameters": _settings_json(src.parameters)}
                                if src.parameters
                                else {}
                            ),
                        }
                        for src in sl.sources
                    ],
                    **({"parameters": _settings_json(sl.parameters)} if sl.parameters else {}),
                }
                for sl in self.slices
            ]
        else:
            config["models"] = models
        if self.parameters:
            config["parameters"] = _settings_json(self.parameters)
        if self.compute_dtype != "input":
            config["dtype"] = self.compute_dtype or "float32"
        out_dtype = self.dtype or input_dtype or self._inputs_dtype()
        if out_dtype:
            config["out_dtype"] = out_dtype
        if self.seed is not None:
            config["random_seed"] = self.seed
        if self.tokenizer is not None:
            config["tokenizer"] = self.tokenizer.model_dump(mode="json", exclude_none=True)
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        lines = yaml.safe_dump(config, sort_keys=False)
        if self.seed is not None and self.method in RANDOM_METHODS:
            lines = (
                f"# random_seed {self.seed}: `hub-merge merge` of this config replays the same "
                "masks; mergekit ignores the key (its --random-seed draws other ones)\n" + lines
            )
        return lines

    def _inputs_dtype(self) -> str | None:
        """The dtype the engine writes by default: the reference input's (base, else first model).

        Read from the folder's safetensors header when it is a local folder; None for a Hub ref,
        which this module never downloads (callers that know the dtype pass ``input_dtype``).
        """
        from .. import tensors

        folder = Path(self.base or self.models[0].model)
        if not folder.is_dir() or tensors.is_adapter_folder(folder):
            return None
        try:
            reader = tensors.CheckpointReader(folder)
            first = next((n for n in reader.names if reader.dtype(n).is_floating_point), None)
        except (OSError, ValueError):
            return None
        return None if first is None else tensors.dtype_name(reader.dtype(first))


def one_line_error(err: ValidationError) -> str:
    """pydantic's report as one line naming each field and what to do (never its raw text)."""
    parts = []
    for e in err.errors(include_url=False):
        where = ""
        for loc in e["loc"]:
            where += f"[{loc}]" if isinstance(loc, int) else (f".{loc}" if where else str(loc))
        msg = str(e["msg"]).removeprefix("Value error, ")
        if e["type"] == "missing":
            msg = "is required"
        elif e["type"] == "extra_forbidden":
            msg = (
                "is not a recipe field (fields: method, base, models, parameters, dtype, "
                "compute_dtype, seed, exact_mergekit, slices, tokenizer, chat_template)"
            )
        parts.append(f"`{where or 'recipe'}` {msg}")
    return "Invalid merge recipe: " + "; ".join(parts) + "."


ModelEntry.model_rebuild()
MergeRecipe.model_rebuild()


def _settings_json(settings: dict[str, Setting]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in settings.items():
        if isinstance(value, list) and value and isinstance(value[0], Condition):
            out[name] = [c.model_dump(exclude_none=True) for c in value]
        else:
            out[name] = value
    return out
