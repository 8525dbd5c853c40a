"""How long work shows progress on the command line: one display per step, or nothing.

huggingface_hub draws a "Fetching N files" bar per snapshot plus one bar per file, and
transformers one per model load; inside a step that already has its own display (pull, merge,
kinship, search generation) those nest and scroll by dozens. The CLI therefore switches the
libraries' bars off once (``quiet_libraries``) and draws its own, one per step. ``set_quiet``
switches ours off too, for ``--quiet`` and ``--json`` runs that print only their result.
Python API users keep the libraries' defaults: nothing here runs unless the CLI calls it.
"""

from __future__ import annotations

import logging
import os
import sys

_QUIET = False


def quiet_libraries() -> None:
    """Hide huggingface_hub's and transformers' own bars and chatter (the CLI shows its own)."""
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    if "transformers" not in sys.modules:
        # Importing transformers costs seconds that commands like `merge` never need; when it
        # is imported later it reads both settings: the verbosity from this variable, its bars'
        # state from huggingface_hub's (disabled just above).
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    else:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)


def set_quiet(quiet: bool = True) -> None:
    """``--quiet``/``--json``: no progress display at all, only the result."""
    global _QUIET
    _QUIET = quiet
    if quiet:
        quiet_libraries()
        os.environ["TQDM_DISABLE"] = "1"  # every tqdm bar, ours and the libraries' (tqdm>=4.66)
    else:
        os.environ.pop("TQDM_DISABLE", None)


def is_quiet() -> bool:
    return _QUIET
