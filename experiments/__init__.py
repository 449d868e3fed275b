"""Experiments: users of the toolkit, not part of it (the wheel does not install this package).

Run them from a checkout, ``python -m experiments.<name> --config recipes/experiments/<recipe>.yaml``:
``rear_verifiable`` (REAR on verifiable preferences), ``prefeval_choice`` (PrefEval implicit choice),
``prm_guided`` (ORM vs SP-PRM guides). Each ``run`` reads as its stages (pending prompts, models,
decode a batch, judge / annotate it, append); searches are called through ``decoding.search.SEARCHES``.
"""
