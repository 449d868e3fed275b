"""Metrics for ``sp-prm decode`` outputs: the measures the SP-PRM and REAR papers report.

* :mod:`~decoding.metrics.text` -- diversity, ROUGE-L, length (no model);
* :mod:`~decoding.metrics.reward` -- average reward under any reward model;
* :mod:`~decoding.metrics.coherence` -- prompt/response embedding cosine;
* :mod:`~decoding.metrics.gsm8k` -- final-answer extraction and accuracy;
* :mod:`~decoding.metrics.advbench` -- attack success rate (refusal phrases, target match), "Sure here's" prompts;
* :mod:`~decoding.metrics.judge` -- LLM-as-judge (pairwise HH-RLHF, GSM8K) over an OpenAI-compatible API;
* :mod:`~decoding.metrics.run` -- the ``sp-prm metrics`` entry point (``main``).

Submodules that need torch or a model are imported on use, so the model-free
metrics stay cheap to import.
"""

from decoding.metrics.advbench import (
    REFUSAL_PHRASES,
    SURE_HERES,
    attack_success,
    is_refusal,
    target_body_match,
    target_match,
    with_sure_prefix,
)
from decoding.metrics.gsm8k import extract_answer, extract_reference, is_correct
from decoding.metrics.stats import bootstrap_ci, summarize
from decoding.metrics.text import diversity, rouge_l, word_count

__all__ = [
    "REFUSAL_PHRASES", "SURE_HERES", "attack_success", "bootstrap_ci", "diversity", "extract_answer",
    "extract_reference", "is_correct", "is_refusal", "rouge_l", "summarize", "target_body_match", "target_match",
    "with_sure_prefix", "word_count",
]
