"""The few shared experiment helpers this package uses, from wherever the experiments package lives.

``decoding/experiments/`` is moving to a top-level ``experiments/`` package (with ``experiments/common.py``
and ``experiments/prm_guided.py``); this import works before and after that move.
"""

from __future__ import annotations

try:  # after the move
    from experiments.common import append_records, atomic_write_text, read_records  # type: ignore[import-not-found]
except ImportError:  # before it
    from decoding.experiments.common import append_records, atomic_write_text, read_records


def prm_guided_module():
    """The PRM-guided search experiment module (``experiments.prm_guided``, formerly ``decoding.experiments``)."""
    try:
        import experiments.prm_guided as module  # type: ignore[import-not-found]
    except ImportError:
        import decoding.experiments.prm_guided as module
    return module


__all__ = ["append_records", "atomic_write_text", "prm_guided_module", "read_records"]
