#!/usr/bin/env bash
# The main job on the embedded default (CPU): the shipped HH-RLHF sample and the real
# all-MiniLM-L6-v2 / SmolLM2-135M models from their PyPI wheels. One process, each stage timed:
#   1. a reference ORM on full pairs               (recipes/hh-rlhf/train_orm_minilm.yaml)
#   2. weighted SST partial pairs scored by it      (recipes/hh-rlhf/prepare_sst_minilm.yaml);
#      a flat weight distribution fails the job
#   3. the SP-PRM (weighted Bradley-Terry, Eq. 3)   (recipes/hh-rlhf/train_sst_minilm.yaml)
#   4. both on held-out full and partial responses, paired bootstrap (sp-prm evaluate-rm)
#   5. a judge that guides nothing (a linear probe on frozen SmolLM2-135M features)
#   6. SmolLM2 on held-out prompts: plain sampling vs Best-of-4 guided by the ORM / the SP-PRM,
#      on the same candidates, scored by the judge
#   7. outputs/SUMMARY.md + outputs/summary.png (printed)
# Outputs land in outputs/; rerunning rebuilds them. See scripts/main_job.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python scripts/main_job.py "$@"
