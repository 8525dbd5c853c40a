"""`hf merge ...` runs hub-merge: the hf CLI dispatches to the `hf-merge` console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["HOME"] = str(home)  # the hf CLI keeps extensions under ~/.local/share/hf/extensions
    env["HF_HUB_DISABLE_UPDATE_CHECK"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    return env


def test_hf_merge_script_takes_the_same_commands() -> None:
    out = subprocess.run(
        [str(BIN / "hf-merge"), "--help"], capture_output=True, text=True, check=True
    )
    assert "Usage: hf merge" in out.stdout
    for command in ("pull", "kinship", "merge", "search", "card", "push", "demo"):
        assert f"  {command}" in out.stdout
    sub = subprocess.run(
        [str(BIN / "hf-merge"), "search", "--help"], capture_output=True, text=True, check=True
    )
    hub = subprocess.run(
        [str(BIN / "hub-merge"), "search", "--help"], capture_output=True, text=True, check=True
    )
    assert sub.stdout.replace("hf merge", "hub-merge") == hub.stdout


def test_hf_cli_runs_the_registered_extension(tmp_path: Path) -> None:
    hf = shutil.which("hf", path=str(BIN)) or str(BIN / "hf")
    before = subprocess.run(
        [hf, "merge", "--help"], capture_output=True, text=True, env=_env(tmp_path)
    )
    assert "Usage: hf merge" not in before.stdout  # not registered yet

    reg = subprocess.run(
        [str(BIN / "hub-merge"), "extension", "install"],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        check=True,
    )
    manifest = tmp_path / ".local/share/hf/extensions/hf-merge/manifest.json"
    assert str(manifest) in reg.stdout
    data = json.loads(manifest.read_text())
    assert data["short_name"] == "merge" and Path(data["executable_path"]).name == "hf-merge"

    after = subprocess.run(
        [hf, "merge", "--help"], capture_output=True, text=True, env=_env(tmp_path), check=True
    )
    assert "Usage: hf merge" in after.stdout and "kinship" in after.stdout
    listed = subprocess.run([hf, "--help"], capture_output=True, text=True, env=_env(tmp_path))
    assert "merge" in listed.stdout
