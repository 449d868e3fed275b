"""The ``rm:`` scorer on a vLLM pooling engine (``scorer: {name: "rm:<path>", backend: vllm}``).

    engine = LocalRewardEngine("outputs/prm", dtype="float32")               # vllm.LLM(runner="pooling") here
    engine = ServerRewardEngine("http://prm-box:8001")                       # a `vllm serve ... --runner pooling`
    scorer = EngineRewardScorer(engine, tokenizer, prefix_format)            # then any search, either policy backend

An SP-PRM is a last-token sequence classifier, which vLLM's pooling runner serves with chunked
prefill and prefix caching. This scorer sends it the ids the HF scorer
(``decoding.scorers.ClassifierScorer``) would score -- built by the same code
(``sp_prm.formatting.encode`` in the checkpoint's ``config.sp_prm`` format; the end marker on
complete responses only) and sent as token ids (``TokensPrompt`` in-process, ``/classify``'s
token-id ``input`` on a server), never re-tokenised text -- and reads the raw reward at the last
token (``pooling_type LAST``, ``use_activation False``: without it the engine returns the
sigmoid). In fp32 the rewards equal the HF scorer's (tested to 1e-3).

Prefix caching: a search step's candidates extend what the previous step scored, and a prompt's
candidates share its prompt, so the engine serves their common prefix from its KV cache. Caching
is per whole KV block: a request computes its tokens past the last full block it shares with
something already computed -- at most its new tokens plus one block (``block_size - 1`` tokens of
the block the new tokens open). The HF scorer's token tree computes the new tokens alone; the
engine gives that up for sharding, batching across clients and another machine.

Accounting (``Meter``): ``scorer_tokens`` = prompt tokens the engine computed,
``scorer_tokens_cached`` = tokens it served from its prefix cache. In-process both come per
request (``num_cached_tokens``). A server's ``/classify`` answer carries no cached count (vLLM
0.32), so the call's total is the change of the server's Prometheus counter
``vllm:prefix_cache_hits`` across the call (exact when this search is the server's only client)
split over the call's prompts in proportion to their tokens; a server without ``/metrics``
reports every token as computed (warned once).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

from decoding.scorers import ClassifierScorer, check_lengths
from decoding.types import Meter, Partial, Prompt
from decoding.vllm_policy import EngineError, LocalEngine, ServerEngine, check_engine_tokenizer, make_engine
from sp_prm.formatting import PrefixFormat


@dataclass
class Classified:
    """One scored sequence: its reward, prompt length and the tokens served from the prefix cache."""

    reward: float
    prompt_tokens: int
    cached_tokens: int | None


class LocalRewardEngine(LocalEngine):
    """``vllm.LLM(runner="pooling")`` in this process: the last token's raw score-head output.

    Args: as :class:`decoding.vllm_policy.LocalEngine` (``engine_args``: ``block_size``,
    ``tensor_parallel_size``, ``gpu_memory_utilization``, ...).
    """

    def __init__(self, model: str, dtype: str = "float32", enforce_eager: bool = False,
                 enable_prefix_caching: bool = True, max_model_len: int | None = 4096, seed: int = 0,
                 engine_args: dict[str, Any] | None = None) -> None:
        from vllm.config import PoolerConfig

        args = {"runner": "pooling", "convert": "classify",
                "pooler_config": PoolerConfig(pooling_type="LAST", use_activation=False)}
        args.update(engine_args or {})
        super().__init__(model, dtype=dtype, enforce_eager=enforce_eager, enable_prefix_caching=enable_prefix_caching,
                         max_model_len=max_model_len, seed=seed, engine_args=args)
        self.description = f"vllm.LLM({model}, runner=pooling)"
        self.block_size = int(self.llm.llm_engine.vllm_config.cache_config.block_size)

    def classify(self, seqs: Sequence[Sequence[int]]) -> list[Classified]:
        """Every sequence's reward in one batched call (the engine schedules and caches across them)."""
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        if not seqs:
            return []
        outs = self.llm.classify([TokensPrompt(prompt_token_ids=list(s)) for s in seqs],
                                 pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
        results = []
        for s, o in zip(seqs, outs):
            probs = list(o.outputs.probs)
            if len(probs) != 1:
                raise EngineError(f"{self.description} returns {len(probs)} scores per sequence; a reward model "
                                  "has one (num_labels 1)")
            results.append(Classified(float(probs[0]), len(s), o.num_cached_tokens))
        return results


_HITS = re.compile(r"^vllm:prefix_cache_hits(?:_total)?(?:\{[^}]*\})?\s+([0-9.eE+-]+)\s*$", re.M)


class ServerRewardEngine(ServerEngine):
    """A pooling server (``vllm serve <prm> --runner pooling``) at ``url``; connection checks, retries,
    timeouts and concurrency are the policy's (:class:`decoding.vllm_policy.ServerEngine`).

    Sequences go to ``/classify`` as token ids, ``batch`` per request, ``workers`` requests at once.
    A server that cannot classify (a generation server, ``--runner generate``) is refused here.
    """

    def __init__(self, url: str, model: str | None = None, timeout: float = 600.0, connect_timeout: float = 10.0,
                 retries: int = 3, workers: int = 16, batch: int = 32, api_key: str | None = None,
                 setting: str = "scorer.vllm") -> None:
        super().__init__(url, model, timeout=timeout, connect_timeout=connect_timeout, retries=retries,
                         workers=workers, api_key=api_key, setting=setting)
        self.batch = max(1, int(batch))
        self.block_size: int | None = None  # not reported by the API
        self._warned_metrics = False
        try:
            probe = self._classify([self.encode_text("Hello")])
        except EngineError as e:
            raise EngineError(f"{self.description} does not classify ({e}); serve the reward model with "
                              "`vllm serve <prm> --runner pooling`") from None
        if len(probe[0]) != 1:
            raise EngineError(f"{self.description} returns {len(probe[0])} scores per sequence; a reward model "
                              "has one (num_labels 1)")

    def _classify(self, seqs: Sequence[Sequence[int]]) -> list[list[float]]:
        out = self._call("/classify", {"model": self.model, "input": [list(s) for s in seqs],
                                       "use_activation": False, "add_special_tokens": False})
        data = sorted(out.get("data") or [], key=lambda d: d["index"])
        if len(data) != len(seqs):
            raise EngineError(f"{self.description} answered {len(data)} scores for {len(seqs)} sequences")
        return [[float(x) for x in d["probs"]] for d in data]

    def cache_hits(self) -> float | None:
        """The server's prefix-cache hit counter (tokens since start), or ``None`` without ``/metrics``."""
        try:
            text = self._call("/metrics", timeout=self.connect_timeout, raw=True)
        except EngineError:
            return None
        found = _HITS.findall(text)
        return sum(float(x) for x in found) if found else None

    def classify(self, seqs: Sequence[Sequence[int]]) -> list[Classified]:
        if not seqs:
            return []
        before = self.cache_hits()
        chunks = [list(seqs[a: a + self.batch]) for a in range(0, len(seqs), self.batch)]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(chunks))) as pool:
            scores = [s for part in pool.map(self._classify, chunks) for s in part]
        after = self.cache_hits() if before is not None else None
        hits = None if after is None else max(0.0, after - before)
        if hits is None and not self._warned_metrics:
            self._warned_metrics = True
            warnings.warn(f"{self.description} has no prefix-cache counter at /metrics: scorer tokens are counted "
                          "as all computed", stacklevel=3)
        total = sum(len(s) for s in seqs)
        results = []
        for s, sc in zip(seqs, scores):
            if len(sc) != 1:
                raise EngineError(f"{self.description} returns {len(sc)} scores per sequence")
            results.append(Classified(sc[0], len(s), None if hits is None else 0))
        if hits:  # the call's total, split in proportion to each sequence's tokens (largest remainder)
            share = [hits * len(s) / total for s in seqs]
            got = [int(x) for x in share]
            for j in sorted(range(len(seqs)), key=lambda j: got[j] - share[j])[: int(round(hits)) - sum(got)]:
                got[j] += 1
            for r, g in zip(results, got):
                r.cached_tokens = min(g, r.prompt_tokens - 1)
        return results


class EngineRewardScorer:
    """A sequence-classification reward model on a vLLM pooling engine. See the module docstring.

    Args:
        engine: :class:`LocalRewardEngine` or :class:`ServerRewardEngine` (anything with ``classify(seqs)``).
        tokenizer: the RM's own tokenizer (the checkpoint's; checked against the engine's).
        prefix_format: the PRM's training format (``config.sp_prm``; see :func:`build_engine_scorer`).
        check_tokenizer: refuse an engine whose tokenizer disagrees with ``tokenizer``.
    """

    additive = False
    default_aggregation = "last"
    causal = True
    prefix_cache = None  # the engine keeps the cache

    # The ids are the HF scorer's, built by its own code (one definition of what an RM reads).
    sequence = ClassifierScorer.sequence
    _sequence = ClassifierScorer._sequence
    _check_encodable = ClassifierScorer._check_encodable
    _encode_call = ClassifierScorer._encode_call

    def __init__(self, engine: Any, tokenizer: Any, prefix_format: PrefixFormat | None = None,
                 meter: Meter | None = None, check_tokenizer: bool = True) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        if check_tokenizer:
            check_engine_tokenizer(engine, tokenizer, who="reward model", model_setting="the rm: path")
        self.format = prefix_format or PrefixFormat()
        self.meter = meter or Meter()
        self._warned_unknown = False

    @torch.no_grad()
    def score(self, prompts: Sequence[Prompt], partials: Sequence[Partial]) -> torch.Tensor:
        check_lengths(prompts, partials)
        if not partials:
            return torch.empty(0)
        seqs, groups = self._encode_call(prompts, partials)
        # Identical RM ids in one call (two policy tokenisations of the same text, or a candidate that
        # finished and is carried along) are sent once. Besides the compute, this keeps their rewards
        # bit-identical: the engine batches and caches each request differently, so two copies can come
        # back 1e-7 apart, and a search's top-k would then break their tie by that noise instead of by
        # slot order as the HF scorer's token tree (one node per distinct sequence) does.
        first: dict[tuple[int, ...], int] = {}
        where = [first.setdefault(tuple(s), len(first)) for s in seqs]
        sent: list[int] = []  # sent[j]: the first row holding distinct sequence j (it is billed the request)
        for i, j in enumerate(where):
            if j == len(sent):
                sent.append(i)
        results = self.engine.classify([seqs[i] for i in sent])
        hits = [results[where[i]].cached_tokens or 0 for i in sent]
        computed = [results[where[i]].prompt_tokens - h for i, h in zip(sent, hits)]
        self.meter.add("scorer_tokens", [groups[i] for i in sent], computed)
        self.meter.add("scorer_tokens_cached", [groups[i] for i in sent], hits)
        return torch.tensor([results[j].reward for j in where], dtype=torch.float32)


def checkpoint_format(path: str, requested: PrefixFormat | None, trust_remote_code: bool = False) -> PrefixFormat:
    """The format to score ``path``'s RM in: its ``config.sp_prm`` one; a different ``requested`` is refused.

    Also refuses what the engine scorer cannot serve: an encoder (no last-token reward) or a
    checkpoint without a one-output score head.
    """
    from transformers import AutoConfig

    from sp_prm.models import resolve, trained_prefix_format
    from sp_prm.scoring import _ENCODER_TYPES

    config = AutoConfig.from_pretrained(resolve(path), trust_remote_code=trust_remote_code)
    archs = list(getattr(config, "architectures", None) or [])
    if config.model_type in _ENCODER_TYPES:
        raise ValueError(f"rm:{path} is an encoder ({config.model_type}); scorer.backend: vllm serves decoder "
                         "(last-token) reward models; use scorer.backend: hf")
    if not any(a.endswith("ForSequenceClassification") for a in archs) or config.num_labels != 1:
        raise ValueError(f"rm:{path} is not a one-output sequence classifier (architectures {archs}, "
                         f"num_labels {config.num_labels}); train or convert a reward model first")
    trained = trained_prefix_format(SimpleNamespace(config=config))
    if trained is not None and requested is not None and trained != requested:
        raise ValueError(f"rm:{path} was trained on prefixes rendered as {trained.to_dict()}, but scorer.prefix "
                         f"renders {requested.to_dict()}; drop scorer.prefix or set it to the model's format")
    return trained or requested or PrefixFormat()


def build_engine_scorer(path: str, vllm_cfg: Any, prefix: PrefixFormat | None = None, dtype: str = "float32",
                        trust_remote_code: bool = False, seed: int = 0, meter: Meter | None = None) -> EngineRewardScorer:
    """``sp-prm decode``'s ``scorer.backend: vllm``: the engine (in-process, or ``vllm_cfg.url``) and the scorer.

    ``vllm_cfg``: a ``decoding.decode.VllmConfig`` (url, served_model, enforce_eager, engine_args, ...).
    """
    from sp_prm.models import load_tokenizer, resolve

    fmt = checkpoint_format(path, prefix, trust_remote_code)
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    engine = make_engine(vllm_cfg, resolve(path), dtype, trust_remote_code, seed, LocalRewardEngine,
                         ServerRewardEngine, setting="scorer", server="pooling server")
    return EngineRewardScorer(engine, tokenizer, fmt, meter=meter, check_tokenizer=vllm_cfg.check_tokenizer)
