#!/usr/bin/env bash
# Issue 16: the known-gold testbed, every stage for one training seed, then the comparison of every finished seed.
# Resumable: each stage skips what it already finished (rerun the same command after a kill).
#   bash scripts/experiment_gold.sh [seed] [overrides...]     e.g. bash scripts/experiment_gold.sh 1
# GPU: bash scripts/experiment_gold.sh 0 --dtype bfloat16 --policy <hf id> --teacher.backbone <hf id>
# Writes outputs/gold/ (teacher/, data/, seed<N>/{orm,...,value,search}, summary.md, times.json).
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=${1:-0}
shift || true
RECIPE=${GOLD_RECIPE:-recipes/experiments/gold_hh.yaml}
for stage in teacher data contenders value search compare; do
    python -m experiments.gold.run "$stage" --config "$RECIPE" --seed "$SEED" "$@"
done
