#!/usr/bin/env bash
# Run every test of the template: hooks, renders (matrix, hostile values, invalid answers),
# each render's own test suite, template update with cruft, and the docs build.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup-env.sh"
cd "$ROOT"
ruff check hooks tests local_extensions.py scripts
python -m pytest -n "${PYTEST_WORKERS:-2}" "$@"
