"""GSM8K: final-answer extraction and exact numeric comparison.

References are GSM8K ``answer`` fields (the final answer follows ``####``) or the
pairwise-math ``A: 18`` form; a bare number is accepted too. Model responses are
free text, so :func:`extract_answer` tries, in order, the conventions a model is
likely to follow and takes the *last* match of the first rule that matches
(a solution restates intermediate numbers before its final one):

1. ``#### 42`` (the GSM8K training format);
2. ``\\boxed{42}`` (math-tuned models);
3. ``answer is 42`` / ``answer: 42`` / ``A: 42``;
4. the last number anywhere in the response (``fallback_last_number``).

Numbers are compared as decimals after dropping thousands separators, ``$`` and
a trailing period, so ``$70,000.00`` equals ``70000``.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# A thousands-separated number must have groups of exactly three digits, so a
# list such as "3,4" reads as two numbers, not 34.
_NUMBER = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+"
_NUMBER_RE = re.compile(_NUMBER)
_HASHES = re.compile(r"####\s*\$?\s*(" + _NUMBER + ")")
_BOXED = re.compile(r"\\boxed\{\s*\\?\$?\s*(" + _NUMBER + r")[^}]*\}")
_ANSWER_IS = re.compile(
    r"(?:answer\s*(?:is|:|=)|^\s*A:)\s*(?:\*\*)?\s*\\?\$?\s*(" + _NUMBER + ")", re.IGNORECASE | re.MULTILINE
)


def to_number(text: str) -> Decimal | None:
    """``'$1,234.50'`` -> ``Decimal('1234.50')``; ``None`` when it is not a number."""
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        return Decimal(cleaned)
    except InvalidOperation:
        return None


def extract_reference(answer: str) -> Decimal:
    """The final answer of a GSM8K reference (``... #### 72``, ``A: 72`` or ``72``)."""
    for pattern in (_HASHES, _ANSWER_IS):
        found = pattern.findall(answer)
        if found:
            value = to_number(found[-1])
            if value is not None:
                return value
    value = to_number(answer)
    if value is None:
        raise ValueError(f"cannot read a final answer from the reference {answer[-80:]!r}")
    return value


def extract_answer(response: str, fallback_last_number: bool = True) -> Decimal | None:
    """The final numeric answer a response gives, or ``None`` (see the module docstring)."""
    rules = [_HASHES, _BOXED, _ANSWER_IS] + ([_NUMBER_RE] if fallback_last_number else [])
    for pattern in rules:
        found = pattern.findall(response)
        if found:
            return to_number(found[-1])
    return None


def is_correct(response: str, reference: str, fallback_last_number: bool = True) -> bool:
    """Whether the response's final answer equals the reference's, numerically."""
    predicted = extract_answer(response, fallback_last_number)
    return predicted is not None and predicted == extract_reference(reference)
