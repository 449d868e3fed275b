"""A known-gold testbed for process rewards (issue 16): does an SP-PRM guide search better than its ORM?

A fixed teacher reward model *defines* quality (the synthetic-gold setup of RM over-optimisation
studies); the policy's own samples are labelled by it; the true process value of any prefix is
estimated by policy rollouts judged by it (``sp-prm evaluate-rm`` with ``process_value:``). Every
contender is trained on the same teacher-labelled pairs and judged by the teacher exactly.

Stages (each one command, resumable; ``bash scripts/experiment_gold.sh [seed]`` runs them all)::

    python -m experiments.gold.run teacher    --config recipes/experiments/gold_hh.yaml
    python -m experiments.gold.run data       --config recipes/experiments/gold_hh.yaml
    python -m experiments.gold.run contenders --config recipes/experiments/gold_hh.yaml --seed 0
    python -m experiments.gold.run value      --config recipes/experiments/gold_hh.yaml --seed 0
    python -m experiments.gold.run search     --config recipes/experiments/gold_hh.yaml --seed 0
    python -m experiments.gold.run compare    --config recipes/experiments/gold_hh.yaml

Modules: :mod:`.config` (the recipe), :mod:`.teacher` (stage a), :mod:`.onpolicy` (b),
:mod:`.stages` (c-d: the contenders' training and evaluation commands), :mod:`.compare` (tables).
"""
