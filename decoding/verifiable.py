"""Preferences a program can check, for measuring REAR-style realignment without a judge.

Each :class:`Preference` has the instruction a user would add to a question (the
"preference" half of a REAR prompt) and a verifier that says whether a response
follows it. ``build_prompts`` pairs real questions with these preferences,
round-robin, into records ``{id, question, preference, preference_name}`` that
``sp-prm decode`` reads; ``satisfaction`` scores decode outputs.

The verifiers are deliberately literal (what a program can check), documented
per preference, and tested on hand-written answers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+\S")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
_WORD = re.compile(r"[A-Za-z']+")


def _lines(text: str) -> list[str]:
    return [line for line in text.strip().splitlines() if line.strip()]


def is_bulleted_list(text: str) -> bool:
    """At least two bullet lines (``-``, ``*``, ``•`` or ``1.``/``1)``) and most lines are bullets."""
    lines = _lines(text)
    bullets = sum(bool(_BULLET.match(line)) for line in lines)
    return bullets >= 2 and bullets >= 0.5 * len(lines)


def sentence_count(text: str) -> int:
    """Sentences ended by ``.``, ``!`` or ``?`` (a trailing fragment counts as one)."""
    text = text.strip()
    if not text:
        return 0
    ends = list(_SENTENCE_END.finditer(text))
    tail = text[ends[-1].end():].strip() if ends else text
    return len(ends) + (1 if tail else 0)


def at_most_two_sentences(text: str) -> bool:
    return 0 < sentence_count(text) <= 2


def starts_with_summary_line(text: str) -> bool:
    """A first line of at most 20 words, then a blank line, then more text."""
    parts = re.split(r"\n\s*\n", text.strip(), maxsplit=1)
    return len(parts) == 2 and "\n" not in parts[0] and 0 < len(_WORD.findall(parts[0])) <= 20 and bool(parts[1].strip())


def avoids_word(word: str) -> Callable[[str], bool]:
    pattern = re.compile(rf"\b{re.escape(word)}\b", re.IGNORECASE)
    return lambda text: bool(text.strip()) and not pattern.search(text)


def ends_with_question(text: str) -> bool:
    return text.strip().endswith("?")


def all_lowercase(text: str) -> bool:
    return bool(re.search(r"[a-z]", text)) and not re.search(r"[A-Z]", text)


def no_commas(text: str) -> bool:
    return bool(text.strip()) and "," not in text


@dataclass(frozen=True)
class Preference:
    name: str
    instruction: str
    check: Callable[[str], bool]


PREFERENCES: dict[str, Preference] = {
    p.name: p
    for p in (
        Preference("bullets", "Please answer as a bulleted list.", is_bulleted_list),
        Preference("two_sentences", "Please answer in at most two sentences.", at_most_two_sentences),
        Preference("summary_first", "Start your answer with a one-line summary, then a blank line, then the details.",
                   starts_with_summary_line),
        Preference("no_you", "Do not use the word \"you\" in your answer.", avoids_word("you")),
        Preference("end_question", "End your answer with a question for me.", ends_with_question),
        Preference("lowercase", "Write your whole answer in lowercase letters only.", all_lowercase),
        Preference("no_commas", "Do not use any commas in your answer.", no_commas),
    )
}


def build_prompts(questions: Iterable[tuple[str, str]], names: list[str] | None = None) -> list[dict[str, str]]:
    """Pair ``(id, question)`` items with preferences round-robin (``names`` default: all)."""
    chosen = [PREFERENCES[n] for n in (names or list(PREFERENCES))]
    out = []
    for i, (qid, question) in enumerate(questions):
        pref = chosen[i % len(chosen)]
        out.append({"id": f"{qid}-{pref.name}", "question": question, "preference": pref.instruction,
                    "preference_name": pref.name})
    return out


def satisfaction(records: Iterable[dict], response_field: str = "response") -> dict[str, dict[str, float]]:
    """Share of responses following their preference, overall and per preference, with 95% CIs."""
    hits: dict[str, list[bool]] = {}
    for rec in records:
        name = rec["preference_name"]
        if name not in PREFERENCES:
            raise KeyError(f"record {rec.get('id')!r}: unknown preference_name {name!r}; known: {sorted(PREFERENCES)}")
        ok = PREFERENCES[name].check(rec[response_field])
        hits.setdefault(name, []).append(ok)
        hits.setdefault("all", []).append(ok)
    out = {}
    for name, values in hits.items():
        p = sum(values) / len(values)
        out[name] = {"n": len(values), "rate": p, "ci95": 1.96 * math.sqrt(p * (1 - p) / len(values))}
    return out
