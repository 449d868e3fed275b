"""Batches of (partial) preference pairs as token ids, flat or multi-prefix.

A batch holds ``S`` padded sequences and, for each of its ``P`` pairs, where the
chosen and the rejected reward are read: ``(sequence row, token index)``.

* **flat**: every side of every pair is its own sequence (identical sequences,
  e.g. a clipped shorter side repeated across positions, are stored once).
* **multi-prefix** (decoder-only RMs): the sides of one source pair (same ``id``)
  are grouped (chosen and rejected together); each group is covered by as few sequences as possible -- a side's
  ids that are a token prefix of a longer side's ids are read *inside* that longer
  sequence at index ``len(ids) - 1``. Causal attention makes that hidden state
  equal the last hidden state of the prefix alone, so one forward pass over the
  longest sequence gives every prefix reward. This is checked id by id, never
  assumed: a complete prefix carries the end marker, so a shorter partial prefix
  sits inside it, but two different cuts of a response whose tokenization differs
  would not -- such a side simply gets its own sequence.

The collator never adds or removes a token: what ``sp-prm prepare`` wrote in
``chosen_ids`` / ``rejected_ids`` is exactly what the model reads.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Sampler


def _is_prefix(short: Sequence[int], long: Sequence[int]) -> bool:
    return len(short) <= len(long) and list(long[: len(short)]) == list(short)


def cover(sides: Sequence[Sequence[int]]) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """Cover id lists by few sequences: returns ``(sequences, [(sequence, index) per side])``.

    Longest first; a side joins the first kept sequence it is a prefix of, else it
    becomes a new sequence. ``index`` is the position of the side's last token.
    """
    order = sorted(range(len(sides)), key=lambda i: -len(sides[i]))
    sequences: list[list[int]] = []
    where: list[tuple[int, int]] = [(0, 0)] * len(sides)
    for i in order:
        ids = list(sides[i])
        if not ids:
            raise ValueError("empty token sequence in a pair")
        for s, seq in enumerate(sequences):
            if _is_prefix(ids, seq):
                where[i] = (s, len(ids) - 1)
                break
        else:
            sequences.append(ids)
            where[i] = (len(sequences) - 1, len(ids) - 1)
    return sequences, where


@dataclass
class PairCollator:
    """Collate rows with ``chosen_ids``, ``rejected_ids``, ``weight`` (and ``id``) into a model batch.

    Args:
        pad_token_id: id written under the attention mask's zeros (never read).
        multi_prefix: group sides of the same pair ``id`` and read prefixes inside longer sequences.
        padding_side: ``right`` or ``left``; token indices are shifted accordingly.
        pad_to_multiple_of: round the padded width up to a multiple of this (TRL's ``pad_to_multiple_of``).
    """

    pad_token_id: int
    multi_prefix: bool = False
    padding_side: str = "right"
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        sequences: list[list[int]] = []
        chosen: list[tuple[int, int]] = []
        rejected: list[tuple[int, int]] = []
        if self.multi_prefix:
            # Group by source pair id: prefixes only nest within one conversation (both sides are
            # grouped together, so a rejected response that the chosen one extends is shared too).
            groups: dict[str, list[tuple[int, str, list[int]]]] = {}
            for r, row in enumerate(rows):
                key = str(row.get("id", r))
                groups.setdefault(key, []).append((r, "chosen", row["chosen_ids"]))
                groups[key].append((r, "rejected", row["rejected_ids"]))
            placed: dict[tuple[int, str], tuple[int, int]] = {}
            for members in groups.values():
                seqs, where = cover([ids for _, _, ids in members])
                base = len(sequences)
                sequences.extend(seqs)
                for (r, side, _), (s, idx) in zip(members, where):
                    placed[(r, side)] = (base + s, idx)
            chosen = [placed[(r, "chosen")] for r in range(len(rows))]
            rejected = [placed[(r, "rejected")] for r in range(len(rows))]
        else:
            unique: dict[tuple[int, ...], int] = {}
            for row in rows:
                for side, out in (("chosen_ids", chosen), ("rejected_ids", rejected)):
                    key = tuple(row[side])
                    if not key:
                        raise ValueError("empty token sequence in a pair")
                    if key not in unique:
                        unique[key] = len(sequences)
                        sequences.append(list(key))
                    out.append((unique[key], len(key) - 1))
        width = max(len(s) for s in sequences)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        shift = []
        for i, seq in enumerate(sequences):
            offset = width - len(seq) if self.padding_side == "left" else 0
            input_ids[i, offset: offset + len(seq)] = torch.as_tensor(seq, dtype=torch.long)
            attention_mask[i, offset: offset + len(seq)] = 1
            shift.append(offset)
        return {
            # First key: transformers' find_batch_size reads the batch size (pairs, not sequences) from it.
            "weight": torch.tensor([float(row.get("weight", 1.0)) for row in rows], dtype=torch.float32),
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "chosen_seq": torch.tensor([s for s, _ in chosen], dtype=torch.long),
            "chosen_pos": torch.tensor([i + shift[s] for s, i in chosen], dtype=torch.long),
            "rejected_seq": torch.tensor([s for s, _ in rejected], dtype=torch.long),
            "rejected_pos": torch.tensor([i + shift[s] for s, i in rejected], dtype=torch.long),
            # What a flat batch would have had to process: the denominator of the multi-prefix saving.
            "flat_tokens": torch.tensor(sum(len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in rows)),
            "pair_ids": [str(row.get("id", "?")) for row in rows],
            "positions": torch.tensor([int(row.get("position", -1)) for row in rows], dtype=torch.long),
        }


class GroupedShuffleSampler(Sampler[int]):
    """Shuffle source pairs, keeping the partial pairs of one source pair next to each other.

    Consecutive rows then fall in the same batch, which is what lets the
    multi-prefix collator share one forward pass between them. The order depends
    only on ``seed`` and the epoch, so every process (and a resumed run) sees the
    same order.
    """

    def __init__(self, group_ids: Sequence[str], seed: int = 0) -> None:
        self.seed = seed
        self.epoch = 0
        groups: dict[str, list[int]] = {}
        for i, g in enumerate(group_ids):
            groups.setdefault(str(g), []).append(i)
        self.groups = list(groups.values())
        self.n = len(group_ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        for k in torch.randperm(len(self.groups), generator=g).tolist():
            yield from self.groups[k]
