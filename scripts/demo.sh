#!/usr/bin/env bash
# The README's demo: set up .venv, then run radmtl end to end on synthetic data:
# phantom → check → train (tracked in MLflow, SQLite mlflow.db here) → infer on held-out cases →
# evaluate. Takes a few minutes on 2 CPU cores.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
OUT="${DEMO_OUT:-demo_out}"
EPOCHS="${DEMO_EPOCHS:-40}"
rm -rf "$OUT"
mkdir -p "$OUT"

echo "== 1/5 radmtl phantom: 8 training and 2 held-out synthetic pelvis cases"
radmtl -q phantom "$OUT/data" --cases 8 --seed 0 --shape 64 64 40
radmtl -q phantom "$OUT/heldout" --cases 2 --seed 1000 --shape 64 64 40

echo "== 2/5 radmtl check"
radmtl -q check "$OUT/data"

echo "== 3/5 radmtl train (configs/smoke.yaml, $EPOCHS epochs)"
radmtl train --config configs/smoke.yaml --data "$OUT/data" --out "$OUT/run" \
    --set train.epochs="$EPOCHS" --set train.val_every=5 --no-progress | tee "$OUT/train.txt"
RUN_ID="$(awk '/^MLflow run:/ {print $3}' "$OUT/train.txt")"

echo "== 4/5 radmtl infer (T = 8 MC dropout samples) on the held-out cases"
radmtl infer --model "$OUT/run/checkpoint_best.pt" --input "$OUT/heldout" --output "$OUT/pred" \
    --mc-samples 8 --no-progress

echo "== 5/5 radmtl evaluate"
radmtl evaluate --pred "$OUT/pred" --ref "$OUT/heldout" ${RUN_ID:+--run-id "$RUN_ID"}

cat <<MSG

Done.
  phantom data:       $OUT/data, $OUT/heldout
  run folder:         $OUT/run (checkpoints, train.log, QA pictures in qa/, training_curves.png)
  predictions:        $OUT/pred/<case>/ (sct, seg, sigma maps, provenance.json)
  metrics:            $OUT/pred/metrics.csv, $OUT/pred/metrics.json
  MLflow run:         ${RUN_ID:-"(tracking unavailable)"}
  open the MLflow UI: .venv/bin/mlflow ui --backend-store-uri sqlite:///$PWD/mlflow.db --port 5000
                      then browse http://127.0.0.1:5000
MSG
