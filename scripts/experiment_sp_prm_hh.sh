#!/usr/bin/env bash
# Issue 4 experiment: does SP-PRM make a reward model's prefix scores consistent with its full scores?
# Real data: HH-RLHF harmless-base (../shared/data, 1,812 rows), split 80/20 by hashed pair id.
# Backbone: all-MiniLM-L6-v2 (22.7 M). CPU. Writes outputs/exp-hh/ (see RESULTS.md).
#   bash scripts/experiment_sp_prm_hh.sh [seed]
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=${1:-0}
DATA=${HH_DATA:-../shared/data/hh-rlhf/harmless-base/test.jsonl.gz}
OUT=outputs/exp-hh/seed$SEED
PREFIX=(--prefix.template plain --prefix.max_prompt_tokens 192 --prefix.max_response_tokens 64)
mkdir -p "$OUT"
: > "$OUT/times.txt"
# wall time of each stage, for RESULTS.md
step() { local t=$SECONDS; "$@"; echo "$((SECONDS - t)) s: $*" >> "$OUT/times.txt"; }

python - "$DATA" "$OUT" <<'PY'
import json, sys
from data_prep.loaders import load_preferences
src, out = sys.argv[1], sys.argv[2]
for part in ("train", "eval"):
    pairs, report = load_preferences(src, subset=part, eval_fraction=0.2)
    with open(f"{out}/{part}.jsonl", "w") as f:
        for row in pairs:
            f.write(json.dumps(row) + "\n")
    print(part, len(pairs), report.to_dict())
PY

# 1. reference ORM on full train pairs (train.jsonl is already the train side: no inner eval split)
step sp-prm train --config recipes/hh-rlhf/train_orm_minilm.yaml --dataset "$OUT/train.jsonl" --eval_fraction 0 \
    --seed "$SEED" --resume false --output_dir "$OUT/orm" "${PREFIX[@]}"
# 2. SST (K = 5) partial pairs of the train pairs: weighted by the ORM, and the unweighted ablation data
#    (same seed, so the same positions; Eq. 2 keeps every pair)
step sp-prm prepare --config recipes/hh-rlhf/prepare_sst_minilm.yaml --source "$OUT/train.jsonl" --seed "$SEED" \
    --reference_model "$OUT/orm" --output_dir "$OUT/sst-weighted" --overwrite
step sp-prm prepare --config recipes/hh-rlhf/prepare_sst_minilm.yaml --source "$OUT/train.jsonl" --seed "$SEED" \
    --reference_model null --output_dir "$OUT/sst-unweighted" --overwrite
# 3. SP-PRM (Eq. 3) and its ablation (Eq. 2) with the same number of optimizer steps, both fine-tuned from
#    the ORM as in the paper (which turns RM-Gemma-2B etc. into PRMs), so the question is what partial-pair
#    training does to that ORM
STEPS=$(python -c "from datasets import load_from_disk; import math; print(math.ceil(len(load_from_disk('$OUT/sst-weighted')) * 0.95 / 16))")
step sp-prm train --config recipes/hh-rlhf/train_sst_minilm.yaml --dataset "$OUT/sst-weighted" --loss weighted \
    --model_name_or_path "$OUT/orm" \
    --eval_fraction 0 --max_steps "$STEPS" --seed "$SEED" --resume false --output_dir "$OUT/sp-prm"
step sp-prm train --config recipes/hh-rlhf/train_sst_minilm.yaml --dataset "$OUT/sst-unweighted" --loss unweighted \
    --model_name_or_path "$OUT/orm" \
    --eval_fraction 0 --max_steps "$STEPS" --seed "$SEED" --resume false --output_dir "$OUT/ablation"
# 4. all three on the held-out pairs, identical prefixes; the ORM is the reference (agreement) and the
#    baseline of the paired accuracy differences
step sp-prm evaluate-rm --source "$OUT/eval.jsonl" --subset all --models "[$OUT/sp-prm, $OUT/ablation]" \
    --names '[sp-prm, ablation-eq2]' --reference_model "$OUT/orm" --baseline reference \
    --token_counts '[1, 5, 10, 20, 30, 50]' --fractions '[0.25, 0.5, 0.75, 1.0]' \
    --output_dir "$OUT/eval" "${PREFIX[@]}"
