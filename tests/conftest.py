"""Shared pytest setup. Fixtures live in tests/fixtures/<area>.py, one file per area."""

from __future__ import annotations

import os

# Never talk to the real Hub from tests, and never use Xet against the local server.
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins: list[str] = []
