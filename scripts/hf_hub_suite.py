"""Run huggingface_hub's own server-facing tests against `hub-merge hub serve` and count them.

Used by ``scripts/hf_hub_suite.sh`` (which builds the throwaway venv the tests run in). Steps:

1. export the upstream tests at a tag (``tests/test_hf_api.py``, ``test_file_download.py``,
   ``test_snapshot_download.py`` and their conftest/helpers) from a git checkout or mirror of
   huggingface/huggingface_hub into a temporary folder;
2. start ``hub-merge hub serve`` on a free loopback port with three users made up for this run
   (the suite's user, its "other" user and its enterprise user), their random tokens passed in
   ``$HUB_MERGE_HUB_TOKENS`` (never argv);
3. point the suite's constants (``ENDPOINT_STAGING``, ``TOKEN``, ``OTHER_TOKEN``...) at that
   server through the environment, and run pytest with ``hf_hub_suite_plugin`` (which deselects
   what the server does not claim, with reasons);
4. print ``N of M passed`` from the JUnit report.

Why a separate venv: the tests are written for the client of their own tag (v1.28.0 is the
newest tag in the mirror; the project's installed client is newer and its sdist has no
conftest), so they run against ``huggingface_hub`` of that tag, without ``hf_xet``: the server
takes Xet uploads (``hub_merge/localhub/xet.py``) but serves no Xet downloads (no reconstruction
API), which the suite's Xet tests need. The server itself runs with this interpreter.
"""

from __future__ import annotations

import argparse
import io
import os
import secrets
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIRROR = "/work/.mirror/huggingface+huggingface_hub/repo"
TEST_FILES = ["test_hf_api.py", "test_file_download.py", "test_snapshot_download.py"]
HELPERS = ["__init__.py", "conftest.py", "testing_constants.py", "testing_utils.py"]
# The suite's users (tests/testing_constants.py); their tokens are made up per run.
USERS = {
    "TOKEN": "__DUMMY_HUB_USER__",
    "OTHER_TOKEN": "DVUser",
    "ENTERPRISE_TOKEN": "EnterpriseAdmin",
}
PYTEST_INI = """[pytest]
addopts = -Werror::FutureWarning -p no:cacheprovider
markers =
    xet: needs hf_xet
    no_xet: must run without hf_xet
    inference: inference test
    production: production Hub
    deprecated: expects a FutureWarning
    git_lfs: needs git-lfs
    vcr: recorded cassette
"""


def export_tests(git_dir: str, tag: str, dest: Path) -> None:
    """Write the upstream test files of ``tag`` under ``dest/tests`` (git archive, no checkout)."""
    paths = [f"tests/{name}" for name in HELPERS + TEST_FILES]
    tar = subprocess.run(
        ["git", f"--git-dir={git_dir}", "archive", "--format=tar", tag, *paths],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(dest, filter="data")
    consts = dest / "tests" / "testing_constants.py"
    # The constants are overridden, not edited in place: the tail reads them from the environment.
    overrides = ["", "import os as _os", 'ENDPOINT_STAGING = _os.environ["HF_ENDPOINT"]']
    overrides += [f'{name} = _os.environ["HFSUITE_{name}"]' for name in USERS]
    consts.write_text(consts.read_text() + "\n".join(overrides) + "\n")
    (dest / "pytest.ini").write_text(PYTEST_INI)


def start_hub(data: Path, tokens: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """``hub-merge hub serve`` on a free port; the tokens go in the environment."""
    spec = ",".join(f"{USERS[name]}:{tok}:write" for name, tok in tokens.items())
    env = dict(os.environ, HUB_MERGE_HUB_TOKENS=spec, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "hub_merge", "hub", "serve", "--data", str(data), "--port", "0"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    endpoint = proc.stdout.readline().strip()
    if not endpoint.startswith("http://"):
        proc.kill()
        raise SystemExit(f"hub serve did not start (printed {endpoint!r})")
    return proc, endpoint


def count(junit: Path) -> dict[str, int]:
    """passed / failed / errors / skipped from pytest's JUnit report."""
    tally = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    for case in ET.parse(junit).getroot().iter("testcase"):
        kinds = {child.tag for child in case}
        if "failure" in kinds:
            tally["failed"] += 1
        elif "error" in kinds:
            tally["errors"] += 1
        elif "skipped" in kinds:
            tally["skipped"] += 1
        else:
            tally["passed"] += 1
    return tally


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--test-python", required=True, help="python of the venv with the client")
    parser.add_argument(
        "--git-dir",
        default=os.environ.get("HF_HUB_GIT", MIRROR),
        help="a git dir of huggingface/huggingface_hub (bare or .git)",
    )
    parser.add_argument("--tag", default="v1.28.0")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds for the whole run")
    args, pytest_args = parser.parse_known_args()

    tokens = {name: "hf_" + secrets.token_hex(16) for name in USERS}
    with tempfile.TemporaryDirectory(prefix="hf-hub-suite-") as tmp:
        work = Path(tmp)
        export_tests(args.git_dir, args.tag, work)
        proc, endpoint = start_hub(work / "hub-data", tokens)
        env = dict(os.environ, HF_ENDPOINT=endpoint, PYTHONPATH=str(ROOT / "scripts"))
        env.update({f"HFSUITE_{name}": tok for name, tok in tokens.items()})
        env.update(HF_TOKEN="", HUGGING_FACE_HUB_TOKEN="", HF_HUB_DISABLE_TELEMETRY="1")
        env.pop("HF_HUB_OFFLINE", None)
        junit = work / "junit.xml"
        cmd = [
            args.test_python,
            "-m",
            "pytest",
            "-p",
            "hf_hub_suite_plugin",
            "-q",
            "-rfE",
            f"--junitxml={junit}",
            *(f"tests/{f}" for f in TEST_FILES),
            *pytest_args,
        ]
        try:
            subprocess.run(cmd, cwd=work, env=env, timeout=args.timeout, check=False)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        if not junit.exists():
            print("pytest wrote no report", file=sys.stderr)
            return 1
        t = count(junit)
    total = sum(t.values()) - t["skipped"]
    print(
        f"\nhuggingface_hub {args.tag} tests against hub serve: {t['passed']} of {total} passed "
        f"({t['failed']} failed, {t['errors']} errors, {t['skipped']} skipped)"
    )
    return 0 if t["failed"] == t["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
