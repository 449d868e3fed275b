"""Text metrics that need no model: diversity, ROUGE-L and response length.

**Tokenisation for diversity.** SP-PRM (appendix C.2) takes diversity from ARGS /
contrastive search (Su et al., 2022): ``prod_{n=2..4} unique n-grams / total n-grams``
over *whitespace tokens* of the response (``text.split()``: punctuation stays
attached to its word, case is kept). Whitespace tokens make the number independent
of any model's tokenizer, so runs with different policies stay comparable. The
value is computed per response and averaged over responses by the report.

A response with no 2-gram (fewer than two tokens, e.g. empty) has no defined
diversity: :func:`diversity` returns ``None`` and the report counts it as
undefined instead of calling an empty answer perfectly diverse. When a response
has 2-grams but is too short for 3- or 4-grams, those factors are 1 (nothing of
that order can repeat).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

DIVERSITY_ORDERS = (2, 3, 4)


def whitespace_tokens(text: str, lowercase: bool = False) -> list[str]:
    """The tokens diversity counts: ``text.split()`` (optionally lower-cased)."""
    return (text.lower() if lowercase else text).split()


def ngram_ratio(tokens: Sequence[str], n: int) -> float | None:
    """unique / total n-grams of ``tokens``; ``None`` when there is no n-gram."""
    total = len(tokens) - n + 1
    if total <= 0:
        return None
    unique = len({tuple(tokens[i: i + n]) for i in range(total)})
    return unique / total


def diversity(text: str, orders: Sequence[int] = DIVERSITY_ORDERS, lowercase: bool = False) -> float | None:
    """``prod_n unique n-grams / total n-grams`` of one response (see the module docstring)."""
    tokens = whitespace_tokens(text, lowercase)
    if ngram_ratio(tokens, min(orders)) is None:
        return None
    value = 1.0
    for n in orders:
        ratio = ngram_ratio(tokens, n)
        value *= 1.0 if ratio is None else ratio
    return value


def word_count(text: str) -> int:
    """Response length in whitespace tokens (the unit diversity uses)."""
    return len(text.split())


@lru_cache(maxsize=4)
def _rouge_scorer(use_stemmer: bool) -> Any:
    try:
        from rouge_score import rouge_scorer
    except ImportError as e:  # optional dependency: only ROUGE needs it
        raise ImportError("ROUGE-L needs the rouge-score package: pip install 'rouge-score>=0.1.2'") from e
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)


def rouge_l(prediction: str, reference: str, use_stemmer: bool = True) -> float:
    """ROUGE-L F-measure (sentence-level LCS) of a prediction against one reference.

    Computed by Google's ``rouge-score`` package (a re-implementation of ROUGE-1.5.5
    used by most summarisation papers): lower-cased, non-alphanumerics dropped,
    Porter stemming when ``use_stemmer``.
    """
    return float(_rouge_scorer(use_stemmer).score(reference, prediction)["rougeL"].fmeasure)
