#!/usr/bin/env bash
# The chapter's experiment at its defaults, seeds 0-2, for both BN
# implementations (with population statistics recomputed after training),
# plus the baselines without BN and with LayerNorm: prints a Markdown table
# and keeps every run under $OUT (default runs/chapter).
#
#   tools/chapter_results.sh [--threads 2]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/chapter}
THREADS=${THREADS:-2}
cargo build --release --quiet
bin=./target/release/normlab
mkdir -p "$OUT"
echo "| model | seed | final train loss | final val acc | val acc, recomputed BN stats | s/epoch (train) | total s |"
echo "|---|---|---|---|---|---|---|"
for model in bn-lenet bn-lenet-scratch lenet ln-lenet; do
    for seed in 0 1 2; do
        case $model in lenet|ln-lenet) [ "$seed" = 0 ] || continue ;; esac
        dir="$OUT/$model-seed$seed"
        extra=()
        case $model in bn-*) extra=(--recompute-stats) ;; esac
        summary=$($bin train --model "$model" --seed "$seed" --threads "$THREADS" --out "$dir" --json --quiet "${extra[@]}" | tail -1)
        python3 - "$model" "$seed" "$summary" <<'PY'
import json, sys
model, seed, s = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
r = s.get("recompute_stats") or {}
after = f'{r["val_acc_after"]:.4f}' if r else "-"
print(f'| {model} | {seed} | {s["train_loss"]:.4f} | {s["val_acc"]:.4f} | {after} | {s["train_seconds_per_epoch"]:.2f} | {s["total_seconds"]:.1f} |')
PY
    done
done
