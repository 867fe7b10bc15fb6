#!/usr/bin/env bash
# Create .venv (once) and install requirements-dev.txt into it. Sourced by demo.sh and test.sh.
# Python 3.11: torch 2.14.1 / torchvision 0.29.1 wheels for it lie on this kind of machine.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3.11}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
stamp="$VENV/.requirements-dev.sha256"
wanted="$(sha256sum "$ROOT/requirements-dev.txt" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "==> installing requirements-dev.txt (torch comes from the local wheel cache; first run takes minutes)"
    "$VENV/bin/python" -m pip install --quiet --progress-bar off -r "$ROOT/requirements-dev.txt"
    echo "$wanted" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
export SAGEMAKER_SUPPRESS_V2_WARNING=1
# The second, small environment for SDK v3 (tests/test_sdk_generations.py): exports SDK_V3_PYTHON.
source "$ROOT/scripts/setup-sdk3-env.sh" ""  # "": no project to test (not test.sh's arguments)
