#!/usr/bin/env bash
# The main job, end to end on this machine: render the default project, generate a small
# dataset, train it with the SageMaker training contract (train --local), serve the model
# with the endpoint's handler and predict a generated image. No AWS account needed.
# Usage: bash scripts/demo.sh [output folder, default build/demo]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup-env.sh"
OUT="$(realpath -m "${1:-$ROOT/build/demo}")"
PORT="${DEMO_PORT:-8089}"

echo "==> rendering the default project into $OUT"
rm -rf "$OUT"
mkdir -p "$OUT"
cookiecutter --no-input --output-dir "$OUT" "$ROOT"
PROJECT="$OUT/dog-breed-classifier"
cd "$PROJECT"
python -m pip install --quiet --no-deps -e .
CLI="dog-breed-classifier"

echo "==> generating a small dataset (4 classes of 48x40 JPEGs)"
"$CLI" data synthetic data/synthetic --classes 4 --size 48x40 --per-class 10,3,3

echo "==> training locally under the SageMaker training toolkit (6 epochs, all layers, no pretrained download)"
# lr 0.002 over 6 epochs: the four hues are learnt to a confident answer (test loss well under 0.01).
"$CLI" train --local --data data/synthetic --run-dir runs/demo \
    --hp epochs=6 --hp pretrained=false --hp finetune=full --hp num_classes=4 --hp image_size=32 \
    --hp batch_size=8 --hp test_batch_size=8 --hp lr=0.002 --hp augment=false

echo "==> serving the model on 127.0.0.1:$PORT with inference.py and predicting"
"$CLI" serve --model-data runs/demo/model.tar.gz --port "$PORT" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
python - "$PORT" <<'PY'
import sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/ping"
for _ in range(120):
    try:
        urllib.request.urlopen(url, timeout=1)
        break
    except OSError:
        time.sleep(0.5)
else:
    sys.exit(f"the local endpoint did not answer {url}")
PY
IMAGE="$(find data/synthetic/test -name '*.jpg' | sort | head -n 1)"
"$CLI" predict --local --url "http://127.0.0.1:$PORT" "$IMAGE"
# The answer to check it against: the class is the image's folder (001.Class_001 -> Class 001).
TRUE_CLASS="$(basename "$(dirname "$IMAGE")")"
echo "true class: ${TRUE_CLASS#*.}" | tr '_' ' '

echo "==> done: the project is in $PROJECT"
