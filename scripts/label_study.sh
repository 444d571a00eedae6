#!/usr/bin/env bash
# The main job: what pretraining buys when labels are few. On Fashion-MNIST (Debian's
# dataset-fashion-mnist) with N labelled photos per class, it trains the same network
#   (a) from scratch,
#   (b) from the backbone Vitrine pretrained on the 60,000 training photos without their
#       labels (models/fashion-mnist-simclr, see docs/pretraining.md), fine-tuned,
#   (c) as a linear probe of that backbone (frozen, a new head only),
#   (d) from that backbone again, on the labelled photos and the 60,000 training photos
#       without their labels, whose targets are (b)'s predictions (distillation into the
#       unlabelled photos, as SimCLRv2's third step; about 7 minutes; --no-distil skips it),
#   (e) with --semi also: from that backbone, fine-tuned on the labelled photos and the
#       unlabelled ones with its own confident predictions as targets (FixMatch; about 10
#       more minutes),
# with the same labels, epochs and augmentation, evaluates each on the 10,000 test photos,
# prints the table and writes one HTML report. Then it indexes the test photos as a product
# catalogue with the last of (b), (d) and (e) it trained and shows what visual search finds
# (search.html).
#
# usage: scripts/label_study.sh [--labels-per-class N] [--epochs E] [--seed S] [--out DIR]
#                               [--data-seed D] [--backbone DIR] [--threads T] [--no-distil]
#                               [--semi]
# --seed sets initialisation, order and augmentation; --data-seed (0) which N photos a class
# are the labelled ones.
set -euo pipefail
cd "$(dirname "$0")/.."

labels_per_class=60
epochs=40
seed=0
data_seed=0
out=runs/label_study
backbone=models/fashion-mnist-simclr
threads=0
semi=0
distil=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --labels-per-class) labels_per_class=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --data-seed) data_seed=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --backbone) backbone=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --semi) semi=1; shift ;;
    --no-distil) distil=0; shift ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "label_study.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

vitrine=./build/vitrine
[[ -x $vitrine ]] || { echo "label_study.sh: $vitrine is missing; run scripts/setup.sh" >&2; exit 2; }
[[ -f $backbone/config.json ]] ||
  { echo "label_study.sh: no backbone in $backbone (see docs/pretraining.md)" >&2; exit 2; }
[[ -d /usr/share/datasets/fashion-mnist ]] ||
  { echo "label_study.sh: apt-get install dataset-fashion-mnist (scripts/setup.sh does)" >&2; exit 2; }

rm -rf "$out"
mkdir -p "$out"
start=$(date +%s)

# The same network as the backbone (architecture, input, preprocessing), randomly
# initialised: (a) and (b) differ only in their starting weights.
$vitrine init --like "$backbone" --seed "$seed" --out "$out/random_init"

# One recipe for all: AdamW, warm-up then cosine, crop and flip, label smoothing (but for
# (e), whose pseudo-labels need a model that may be more than 91% sure).
# No validation split: it would hold labels beyond the N per class (2% of the training set
# is 1,200 photos), so each run trains its fixed epochs and its last model is tested once.
common=(--data fashion-mnist --labels-per-class "$labels_per_class" --data-seed "$data_seed"
        --val-split 0
        --epochs "$epochs" --batch-size 64 --warmup-epochs 2
        --scale 0.6 1 --hflip 0.5 --seed "$seed" --threads "$threads")

echo "== (a) from scratch"
$vitrine train --init "$out/random_init" --lr 2e-3 --weight-decay 0.05 --label-smoothing 0.1 \
  "${common[@]}" --out "$out/scratch"
echo "== (b) pretrained backbone, fine-tuned"
$vitrine train --init "$backbone" --lr 1e-3 --weight-decay 0.05 --label-smoothing 0.1 \
  "${common[@]}" --out "$out/pretrained"
echo "== (c) linear probe of the pretrained backbone"
$vitrine train --init "$backbone" --freeze backbone --lr 1e-2 --weight-decay 0 \
  --label-smoothing 0.1 "${common[@]}" --out "$out/probe"
runs=(--run "from scratch=$out/scratch" --run "pretrained, fine-tuned=$out/pretrained"
      --run "linear probe=$out/probe")
search_model=$out/pretrained/best
if [[ $distil == 1 ]]; then
  echo "== (d) pretrained backbone, fine-tuned with the unlabelled photos taught by (b)"
  $vitrine train --init "$backbone" --lr 1e-3 --weight-decay 0.05 --label-smoothing 0.1 \
    --unlabelled fashion-mnist --teacher "$out/pretrained/best" --unlabelled-targets teacher \
    --distill-alpha 0 --distill-temperature 1 "${common[@]}" --out "$out/distilled"
  runs+=(--run "pretrained + unlabelled, taught by (b)=$out/distilled")
  search_model=$out/distilled/best
fi
if [[ $semi == 1 ]]; then
  echo "== (e) pretrained backbone, fine-tuned with the unlabelled photos too (FixMatch)"
  $vitrine train --init "$backbone" --lr 1e-3 --weight-decay 0.05 --unlabelled fashion-mnist \
    "${common[@]}" --out "$out/semi"
  runs+=(--run "pretrained + unlabelled (FixMatch)=$out/semi")
  search_model=$out/semi/best
fi

echo "== test split (10,000 photos), $labels_per_class labels per class, $epochs epochs," \
  "seed $seed, data seed $data_seed"
$vitrine compare --title "Fashion-MNIST, $labels_per_class labels per class: what pretraining buys" \
  "${runs[@]}" --data fashion-mnist --val-split 0 --data-seed "$data_seed" --threads "$threads" \
  --out "$out/report.html" | tee "$out/table.txt"
echo "== visual search: the 10,000 test photos as a catalogue, 2,000 other photos as queries"
$vitrine index --model "$search_model" --data fashion-mnist --split test \
  --db "$out/catalogue" --quiet --threads "$threads"
$vitrine eval-retrieval --db "$out/catalogue" --data fashion-mnist --split val --limit 2000 \
  --threads "$threads" --report "$out/search.html" | tee "$out/search.txt"
echo "wall time: $(( $(date +%s) - start )) s; reports: $out/report.html, $out/search.html"
