#!/usr/bin/env bash
# The main job on the embedded default (CPU, a few minutes): the shipped HH-RLHF sample and the
# real all-MiniLM-L6-v2 / SmolLM2-135M models from their PyPI wheels.
#   1. a reference ORM on full pairs          (sp-prm train, loss: orm)
#   2. weighted SST partial pairs scored by it (sp-prm prepare)
#   3. the SP-PRM (weighted Bradley-Terry)     (sp-prm train, loss: weighted)
#   4. both RMs on held-out full and partial responses (sp-prm evaluate-rm)
#   5. SmolLM2 Best-of-4 on a few prompts, guided by the SP-PRM (sp-prm decode)
# Outputs land in outputs/; rerunning rebuilds them.
set -euo pipefail
cd "$(dirname "$0")/.."
sp-prm train --config recipes/hh-rlhf/train_orm_minilm.yaml --resume false
sp-prm prepare --config recipes/hh-rlhf/prepare_sst_minilm.yaml \
    --reference_model outputs/hh-rlhf-orm-minilm --overwrite
sp-prm train --config recipes/hh-rlhf/train_sst_minilm.yaml --resume false
sp-prm evaluate-rm --config recipes/hh-rlhf/evaluate_minilm.yaml \
    --models '[outputs/hh-rlhf-orm-minilm, outputs/hh-rlhf-sp-prm-minilm]' --names '[orm, sp-prm]'
rm -f outputs/decode/bon_prm_minilm_smollm2.jsonl
sp-prm decode --config recipes/decode/bon_prm_minilm_smollm2.yaml
python - <<'PY'
import json
for line in open("outputs/decode/bon_prm_minilm_smollm2.jsonl"):
    r = json.loads(line)
    print(f"\n[{r['id']}] {r['prompt']}\n  -> {r['response']!r}  (PRM score {r['score']:.3f} of {r['n']})")
PY
