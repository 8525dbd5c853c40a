#!/usr/bin/env bash
# huggingface_hub's own server-facing tests (model repos) against `hub-merge hub serve`.
#
#   scripts/hf_hub_suite.sh [pytest args, e.g. -k TestHfApiTagEndpoint -x]
#
# Needs: a Python with hub-merge installed (PYTHON, default `python`), git, PyPI access (once, for
# the throwaway venv), and a git dir of huggingface/huggingface_hub holding the tag (HF_HUB_GIT, a
# bare mirror or a clone's .git; HF_HUB_TAG, default v1.28.0). The upstream tests are exported from
# it at that tag and run by a venv (.cache/hf-hub-suite/, ignored by git) holding the client of the
# same version, without hf_xet (the local Hub takes Xet uploads but serves no Xet downloads, which
# the suite's Xet tests read). Nothing else leaves the machine:
# the server listens on a free loopback port, with users and random tokens made up for the run.
# Not run in CI. Prints "N of M passed"; the deselected tests are listed with reasons.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
TAG="${HF_HUB_TAG:-v1.28.0}"
VENV=".cache/hf-hub-suite/venv-${TAG}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q "huggingface_hub==${TAG#v}" pytest pytest-mock
  "$VENV/bin/python" -m pip uninstall -q -y hf_xet
fi
exec "$PYTHON" scripts/hf_hub_suite.py --test-python "$PWD/$VENV/bin/python" --tag "$TAG" "$@"
