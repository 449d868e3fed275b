#!/usr/bin/env bash
# Issue 8, part 3: PRM-guided search on HH-RLHF prompts, the ORM vs the SP-PRM as guides.
# Needs the guides of scripts/experiment_sp_prm_hh.sh (same seed). Trains two cross-fitted gold RMs on the
# halves of the 356 held-out pairs (fold = hash of the pair id), then runs
# experiments.prm_guided (recipes/experiments/prm_guided_hh.yaml). Resumable: trained gold RMs and
# decoded prompts are kept. Writes outputs/exp-hh/seed$SEED/gold{0,1} and outputs/experiments/prm_guided_hh_seed$SEED.
#   bash scripts/experiment_prm_guided_hh.sh [seed] [extra experiment overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=${1:-0}
shift || true
EXP=outputs/exp-hh/seed$SEED
for need in "$EXP/eval.jsonl" "$EXP/orm/config.json" "$EXP/sp-prm/config.json"; do
    if [ ! -f "$need" ]; then
        echo "missing $need: run 'bash scripts/experiment_sp_prm_hh.sh $SEED' first (it trains the guides)" >&2
        exit 1
    fi
done
OUT=outputs/experiments/prm_guided_hh_seed$SEED
mkdir -p "$OUT"
step() { local t=$SECONDS; "$@"; echo "$((SECONDS - t)) s: $*" >> "$OUT/times.txt"; }

python - "$EXP" <<'PY'
import json, sys
from experiments.prm_guided import fold_of
exp = sys.argv[1]
rows = [json.loads(line) for line in open(f"{exp}/eval.jsonl") if line.strip()]
for f in (0, 1):
    part = [r for r in rows if fold_of(r["id"], 2) == f]
    with open(f"{exp}/gold-fold{f}.jsonl.tmp", "w") as out:
        out.writelines(json.dumps(r) + "\n" for r in part)
    print(f"gold fold {f}: {len(part)} pairs")
PY
for f in 0 1; do mv "$EXP/gold-fold$f.jsonl.tmp" "$EXP/gold-fold$f.jsonl"; done

# Gold RMs: the ORM recipe (MiniLM from its pretrained weights, not from any guide), 4 epochs because a fold
# is an eighth of the guides' data. Skipped when already trained.
for f in 0 1; do
    if [ ! -f "$EXP/gold$f/model.safetensors" ]; then
        step sp-prm train --config recipes/hh-rlhf/train_orm_minilm.yaml --dataset "$EXP/gold-fold$f.jsonl" \
            --eval_fraction 0 --num_train_epochs 4 --seed "$SEED" --resume false --output_dir "$EXP/gold$f" \
            --prefix.template plain --prefix.max_prompt_tokens 192 --prefix.max_response_tokens 64
    fi
done

step python -m experiments.prm_guided --config recipes/experiments/prm_guided_hh.yaml \
    --pairs_path "$EXP/eval.jsonl" --guides "{orm: $EXP/orm, sp-prm: $EXP/sp-prm}" \
    --gold_models "[$EXP/gold0, $EXP/gold1]" --seed "$SEED" --output_dir "$OUT" "$@"
