#!/usr/bin/env bash
# The SDK v3 environment: a v3 render's core install (`pip install -e .`: the launcher's SDK, boto3, moto,
# pandas; no torch), in ${V3_VENV:-.venv-sdk3}. SDK v3 cannot share an environment with v2 (its packages
# replace v2's `sagemaker`), so the template's v3 tests run their v3 side with this one's Python.
# Built once, rebuilt when cookiecutter.json or the render's pyproject changes; sourced, it exports
# SDK_V3_PYTHON. Given a rendered v3 PROJECT, it then runs that project's launcher tests with it.
# Usage: bash scripts/setup-sdk3-env.sh [PROJECT]    (needs cookiecutter on PATH's python)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
V3_VENV="${V3_VENV:-$ROOT/.venv-sdk3}"
v3_stamp="$V3_VENV/.render-pyproject.sha256"
v3_wanted="$(cat "$ROOT/cookiecutter.json" "$ROOT/{{cookiecutter.project_slug}}/pyproject.toml" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$v3_stamp" 2>/dev/null)" != "$v3_wanted" ]; then
    echo "==> creating $V3_VENV: a SDK v3 render's core install, for the v3 tests (about 150 packages)"
    rm -rf "$V3_VENV"
    "${PYTHON:-python3}" -m venv "$V3_VENV"
    python -m cookiecutter --no-input -o "$V3_VENV/render" "$ROOT" sagemaker_sdk=v3 include_notebook=no >/dev/null
    # sagemaker-inference (the `local` extra's, without torch): a Ray Serve package carries it (aws/ray_package.py),
    # so a v3 `deploy --dry-run` with [endpoint] server = "ray_serve" builds one. The `debug` extra (matplotlib,
    # for the notebook's `%matplotlib inline`) and a kernel: the notebook's SageMaker cells run as a dry run.
    v3_render=("$V3_VENV"/render/*/)
    "$V3_VENV/bin/python" -m pip install --quiet --progress-bar off -e "${v3_render[0]}[debug]" pytest \
        pytest-xdist "sagemaker-inference>=1.10" nbclient nbformat ipykernel
    echo "$v3_wanted" > "$v3_stamp"
fi
export SDK_V3_PYTHON="$V3_VENV/bin/python"
if [ "${1:-}" ]; then
    # The launcher side only: the training and serving code is the same files as a v2 render's. The notebook's
    # requests test skips its local cells, so it needs no torch (tests/test_notebook.py trains: not here).
    cd "$1" && PYTHONPATH=src:. "$SDK_V3_PYTHON" -m pytest -q -p no:cacheprovider -n 2 \
        tests/test_dryrun.py tests/test_preflight.py tests/test_notebook_requests.py
fi
