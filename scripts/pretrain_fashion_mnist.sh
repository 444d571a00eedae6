#!/usr/bin/env bash
# Pretrains the backbone the main job uses (models/fashion-mnist-simclr): a ResNet-10
# (resnet_custom, one basic block per stage, the small-photo stem) learns from the 60,000
# Fashion-MNIST training photos without their labels by SimCLR; the labels only feed the
# k-NN monitor. About 3.5 minutes an epoch on 2 cores (18 epochs, about an hour). An
# interrupted run continues exactly with --resume.
#
# usage: scripts/pretrain_fashion_mnist.sh [--resume] [--out RUN_DIR] [--threads T]
set -euo pipefail
cd "$(dirname "$0")/.."

out=runs/fmnist-simclr
resume=()
threads=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --resume) resume=(--resume); shift ;;
    --out) out=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "pretrain_fashion_mnist.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
vitrine=${VITRINE:-./build/vitrine}
[[ -x $vitrine ]] || { echo "pretrain_fashion_mnist.sh: $vitrine is missing; run scripts/setup.sh" >&2; exit 2; }

[[ -d $out/init ]] || $vitrine init --arch resnet_custom --layers 1 1 1 1 --stem small \
  --in-channels 1 --image-size 28 --num-classes 0 --seed 0 --out "$out/init"
$vitrine pretrain --init "$out/init" --eval-crop-pct 1 --data fashion-mnist --method simclr \
  --epochs 18 --batch-size 256 --lr 1e-3 --weight-decay 0.05 --warmup-epochs 1 \
  --temperature 0.2 --seed 0 --save-every 100 --threads "$threads" --out "$out/run" "${resume[@]}"
echo "backbone: $out/run/last (scripts/label_study.sh reads it from models/fashion-mnist-simclr)"
