#!/usr/bin/env bash
# The main job, for now: build a model directory and classify the photos the
# repository ships. The model's weights are random (no pretrained checkpoint can
# be downloaded here); bring your own with `vitrine import` for real predictions.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/demo}
mkdir -p "$out"
printf '%s\n' t-shirt trouser pullover dress coat sandal shirt sneaker bag "ankle boot" \
  >"$out/labels.txt"
./build/vitrine init --arch resnet18 --labels "$out/labels.txt" --seed 0 --out "$out/model"
echo "== predictions (random weights: the pipeline runs, the labels mean nothing yet) =="
./build/vitrine predict --model "$out/model" --topk 3 examples/images
