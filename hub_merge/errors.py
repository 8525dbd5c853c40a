"""Typed errors for hub-merge.

Every error a user can cause is one of these, each on a builtin base so callers may catch
``ValueError`` / ``OSError`` as usual, and each message says what to do next. The CLI maps them
to one-line messages and exit codes in one place (``hub_merge.cli``). Never put a token in a
message.
"""

from __future__ import annotations

from collections.abc import Sequence


class HubMergeError(Exception):
    """Base of every hub-merge error."""

    exit_code: int = 1


# --- references and configuration -------------------------------------------------------------


class InvalidReferenceError(HubMergeError, ValueError):
    """A model reference (``org/name@rev`` or a folder) cannot be parsed or does not exist."""

    exit_code = 2


class ConfigError(HubMergeError, ValueError):
    """A recipe, search or task configuration is invalid."""

    exit_code = 2


# --- repos and weights ------------------------------------------------------------------------


class UnsupportedRepoError(HubMergeError, ValueError):
    """A repo holds nothing hub-merge can merge (no safetensors, GGUF only, unknown layout)."""

    exit_code = 3


class UnsafeWeightsError(UnsupportedRepoError):
    """Only pickle weights are present and the user did not opt in to loading them."""


class RemoteCodeError(UnsupportedRepoError):
    """The model needs ``trust_remote_code``; hub-merge never runs remote code."""


class IncompatibleModelsError(HubMergeError, ValueError):
    """Models cannot be merged or compared: architecture, shape, vocabulary or base differ."""

    exit_code = 3

    @staticmethod
    def listing(problems: Sequence[object], limit: int = 20) -> str:
        """The problems one per indented line, the first ``limit`` of them, then how many more."""
        lines = "\n  ".join(str(p) for p in problems[:limit])
        more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
        return f"\n  {lines}{more}"


# --- merging and kinship ----------------------------------------------------------------------


class UnusedParameterWarning(UserWarning):
    """A recipe sets a parameter its method does not read; it is ignored, as mergekit does."""


class MergeError(HubMergeError, RuntimeError):
    """A merge failed while running; no output was left behind."""

    exit_code = 4


class UnknownMethodError(ConfigError):
    """A merge method name or parameter that neither hub-merge nor mergekit knows."""


class KinshipError(HubMergeError, ValueError):
    """Kinship is undefined for these models (no common base, different shapes)."""

    exit_code = 3


class LoraBiasError(IncompatibleModelsError, KinshipError):
    """A ``lora_bias=True`` adapter shifts biases the base does not have (merge and kinship)."""


# --- evaluation and search --------------------------------------------------------------------


class TaskFileError(HubMergeError, ValueError):
    """A task JSONL file is missing, empty or malformed."""

    exit_code = 2


class SearchStateError(HubMergeError, RuntimeError):
    """A run folder is missing, corrupt or belongs to a different search."""

    exit_code = 4


class DistributedError(HubMergeError, RuntimeError):
    """Ray is missing, a cluster cannot be reached, or every scoring worker died."""

    exit_code = 4


# --- cards and the Hub ------------------------------------------------------------------------


class LicenseConflictError(HubMergeError, ValueError):
    """Parents carry licenses that conflict; the user must choose one with ``--license``."""

    exit_code = 5


class CardValidationError(HubMergeError, ValueError):
    """The model card's metadata would be rejected by the Hub."""

    exit_code = 5


class HubError(HubMergeError, OSError):
    """Talking to the Hub failed (network, auth, missing repo or revision)."""

    exit_code = 6


class AuthError(HubError):
    """No token, an expired token, or a token without the rights the action needs."""


class PushError(HubError):
    """A push failed; the repo was left as it was before."""
