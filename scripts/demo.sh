#!/usr/bin/env bash
# The README's demo: set up .venv, then run radmtl end to end on synthetic data with the CPU recipe
# configs/quick.yaml: phantom → check → train (tracked in MLflow, SQLite mlflow.db here; σ recalibrated
# on the validation cases at the end) → infer on held-out cases → evaluate.
# A few minutes on 2 CPU cores.
set -euo pipefail
SECONDS=0
elapsed() { printf '%d:%02d' $((SECONDS / 60)) $((SECONDS % 60)); }
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
OUT="${DEMO_OUT:-demo_out}"
CONFIG="${DEMO_CONFIG:-configs/quick.yaml}"
# Training phantoms are made on the network's own grid (configs/quick.yaml data.spacing): the recipe
# trains there, and generating them finer only to be resampled costs minutes on 2 cores.
SHAPE=(56 40 32)
SPACING=(7 7 6)
# The held-out test phantoms are where users are: a native MR resolution (2 × 2 × 3 mm over the same
# field of view), stored in turn on RAS, LPS and oblique grids, and scored on that input grid. A copy of
# the same cases on the network grid keeps the noise-recovery check (σ against the true CT noise SD),
# whose truth lives on the grid where σ was learned: resampling would shrink i.i.d. noise.
NATIVE_SHAPE=(192 144 64)
NATIVE_SPACING=(2 2 3)
rm -rf "$OUT"
mkdir -p "$OUT"

# Six held-out cases rather than three: a case's z mean depends on where its tissue HU fall in the
# phantom's per-case ranges (no MR shows them), so three cases estimate the mean z to about ±0.1,
# the width of its target. They come from the test seed range (radmtl.data.phantom.TEST_SEED), on
# which no recipe choice was made; the recipe was chosen on DESIGN_SEED cases.
read -r TRAIN_SEED TEST_SEED < <(python -c "from radmtl.data.phantom import TRAIN_SEED, TEST_SEED; print(TRAIN_SEED, TEST_SEED)")
# The 5 validation cases (cases 20-24 of the training seed) are made at the native resolution too, as a
# user's validation scans are: radmtl train picks its best checkpoint on them and, at the end, fits the
# σ-scaling factor and the review's flag level on what infer writes for them. Made on the network grid
# instead, σ was fitted where the network grid's own unresolved detail (sct_sigma_grid) never shows: on 6
# design phantoms (seed 1000) with the same model, z SD 1.095 → 1.010 and coverage_95 0.928 → 0.944.
echo "== 1/5 [$(elapsed)] radmtl phantom: 19 training + 5 validation (seed $TRAIN_SEED) and 6 held-out test (seed $TEST_SEED) synthetic pelvis cases"
radmtl -q phantom "$OUT/data" --cases 19 --seed "$TRAIN_SEED" --shape "${SHAPE[@]}" --spacing "${SPACING[@]}"
radmtl -q phantom "$OUT/validation" --cases 5 --first-case 20 --split validation --seed "$TRAIN_SEED" \
    --shape "${NATIVE_SHAPE[@]}" --spacing "${NATIVE_SPACING[@]}" --orientations ras lps oblique
radmtl -q phantom "$OUT/heldout" --cases 6 --seed "$TEST_SEED" --shape "${NATIVE_SHAPE[@]}" \
    --spacing "${NATIVE_SPACING[@]}" --orientations ras lps oblique
radmtl -q phantom "$OUT/heldout_grid" --cases 6 --seed "$TEST_SEED" --shape "${SHAPE[@]}" --spacing "${SPACING[@]}"

echo "== 2/5 [$(elapsed)] radmtl check"
radmtl -q check "$OUT/data" "$OUT/validation"

echo "== 3/5 [$(elapsed)] radmtl train ($CONFIG)"
radmtl train --config "$CONFIG" --data "$OUT/data" "$OUT/validation" --out "$OUT/run" --no-progress | tee "$OUT/train.txt"
RUN_ID="$(awk '/^MLflow run:/ {print $3}' "$OUT/train.txt")"

echo "== 4/5 [$(elapsed)] radmtl infer (MC dropout, σ-scaling from the checkpoint) on the held-out cases, native and network grid"
radmtl infer --model "$OUT/run/checkpoint_best.pt" --input "$OUT/heldout" --output "$OUT/pred" --no-progress
radmtl -q infer --model "$OUT/run/checkpoint_best.pt" --input "$OUT/heldout_grid" --output "$OUT/pred_grid" \
    --no-progress --no-review > /dev/null

echo "== 5/5 [$(elapsed)] radmtl evaluate: on the native input grids (the headline), then σ vs true noise on the network grid"
radmtl evaluate --pred "$OUT/pred" --ref "$OUT/heldout" ${RUN_ID:+--run-id "$RUN_ID"}
radmtl evaluate --pred "$OUT/pred_grid"  --ref "$OUT/heldout_grid" | \
    awk '/^metric/ || /^(mae_hu|zscore_mean|zscore_sd|coverage_95|spearman_sigma_true_noise_soft_tissue|ratio_sigma_true_noise) /'

cat <<MSG

Done in $(elapsed) (min:s).
  phantom data:       $OUT/data (network grid), $OUT/validation and $OUT/heldout (native 2×2×3 mm), $OUT/heldout_grid (network grid)
  run folder:         $OUT/run (checkpoints, train.log, QA pictures in qa/, training_curves.png)
  predictions:        $OUT/pred/<case>/ (sct, seg, sigma maps, provenance.json)
  per-case review:    $OUT/pred/<case>/review/ (review.png, review.html: verdict, flagged voxels; review.json)
  validation reviews: $OUT/run/validation_review/<case>/ (the same on the validation cases, also in MLflow)
  metrics:            $OUT/pred/metrics.csv, $OUT/pred/metrics.json (native), $OUT/pred_grid/metrics.* (network grid)
  MLflow run:         ${RUN_ID:-"(tracking unavailable)"}
  open the MLflow UI: .venv/bin/mlflow ui --backend-store-uri sqlite:///$PWD/mlflow.db --port 5000
                      then browse http://127.0.0.1:5000
MSG
