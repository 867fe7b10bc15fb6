#!/usr/bin/env bash
# Run every test of the template: hooks, renders (matrix, hostile values, invalid answers),
# each render's own test suite, template update with cruft, and the docs build.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup-env.sh"
# The docs are checked in a real browser (tests/test_docs.py): Debian's headless Chromium.
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "==> installing chromium (Debian's package) for the docs tests"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "the docs tests need chromium: sudo apt-get install chromium" >&2
    fi
fi
cd "$ROOT"
ruff check hooks tests local_extensions.py scripts
# worksteal: a worker that runs out of tests takes queued ones from the other (the renders' suites run minutes).
python -m pytest -n "${PYTEST_WORKERS:-2}" --dist worksteal "$@"
