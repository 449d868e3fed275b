"""The ``vllm`` policy backend: the same interface as ``decoding.policy.Policy``, sampled by an engine.

    engine = LocalEngine(model_path, dtype="float32")            # vllm.LLM in this process
    engine = ServerEngine("http://gpu-box:8000", model_path)     # a running `vllm serve` (or SGLang)
    policy = VllmPolicy(engine, tokenizer)                       # then best_of_n / dvts / chunk_beam_search

Token ids end to end: prompts are rendered and tokenized here (the chat template of the
local tokenizer) and sent as ids; responses come back as ids. The search state is a
:class:`decoding.backend.TokenState` (ids per row): forking a candidate copies its ids, and
the engine finds the shared prompt/prefix in its own KV cache (prefix caching).

Sampling: every candidate is one engine request (``n = 1``) with its own seed, so a
candidate's tokens depend on its seed alone -- as on the HF backend, though the two
backends draw different tokens for the same seed (different samplers). All requests of a
``sample`` call are submitted together (one batched ``generate``; concurrent HTTP requests
in server mode). A request stops on EOS (the policy's stop ids), its token budget, or --
with ``stop_at_delimiter`` -- a token whose text contains the step delimiter (the same
token set as the HF backend, sent as ``stop_token_ids``).

Log-probs: each sampled token's log-prob (``logprobs = 0``) in vLLM's default
``logprobs_mode = raw_logprobs``: the model's distribution before temperature and
top-k/top-p, i.e. what the HF backend returns. In fp32 they match HF teacher forcing to
~1e-5; in bf16 they differ by rounding (up to ~0.4 nats seen): compare backends in fp32.

Not available here: the next-token distribution at every token (``token_level = False``),
so ARGS, CARDS and the GenRM scorer stay on the HF backend and raise a clear error.

Compute accounting (``Meter``): generated tokens as reported, prompt tokens split into
computed (``policy_tokens_prefilled``) and served from the prefix cache
(``policy_tokens_cached``) when the engine reports the cached count.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from decoding.backend import TokenState
from decoding.policy import Sample, SamplingParams, delimiter_token_mask, encode_prompt, stop_and_pad_ids
from decoding.types import Message, Meter, candidate_seed
from sp_prm.formatting import PrefixFormat

# A text whose tokenization must agree between the engine and the local tokenizer (words,
# digits, whitespace runs, punctuation, non-ASCII, the chat markers).
TOKENIZER_PROBE = "Hello, world! 12345 naïve café\n\n  indented\t<|im_start|>user\nWhy?<|im_end|>"


@dataclass
class EngineRequest:
    """One engine request: a token-id prompt and how to continue it (``max_tokens = 0``: score only)."""

    prompt: list[int]
    max_tokens: int
    seed: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop_token_ids: list[int] = field(default_factory=list)
    prompt_logprobs: bool = False
    read_cache: bool = True  # False: compute the whole prompt (no prefix-cache hit)


@dataclass
class EngineResult:
    """What came back for one request.

    ``prompt_logprobs[p]`` is log pi(prompt[p] | prompt[:p]) (``nan`` where the engine did not
    compute it: position 0 and positions served from the prefix cache).
    """

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    stop_reason: int | str | None
    prompt_tokens: int
    cached_tokens: int | None
    prompt_logprobs: list[float] | None = None


class EngineError(RuntimeError):
    """The engine could not be reached or refused a request."""


def _sampled_logprobs(token_ids: Sequence[int], entries: Any) -> list[float]:
    """Log-prob of each sampled token from vLLM's per-position {token_id: Logprob} dicts."""
    if entries is None:
        return [math.nan] * len(token_ids)
    out = []
    for t, d in zip(token_ids, entries):
        lp = d.get(t) if d else None
        out.append(float(lp.logprob) if lp is not None else math.nan)
    return out


class LocalEngine:
    """``vllm.LLM`` in this process (the engine core runs in a subprocess: guard scripts with
    ``if __name__ == "__main__":``).

    Args:
        model: a local folder or hub id (a safetensors checkpoint; vLLM cannot read SmolLM2's GGUF).
        dtype: ``float32`` reproduces the HF backend's numbers; ``bfloat16`` is faster.
        enforce_eager: skip graph compilation (start-up ~20 s instead of ~90 s on 2 CPU cores).
        enable_prefix_caching: reuse KV blocks of shared prefixes across requests (on by default).
        engine_args: anything else ``vllm.LLM`` takes (``tensor_parallel_size``, ``block_size``, ...).
    """

    def __init__(
        self,
        model: str,
        dtype: str = "float32",
        enforce_eager: bool = False,
        enable_prefix_caching: bool = True,
        max_model_len: int | None = 4096,
        seed: int = 0,
        engine_args: dict[str, Any] | None = None,
    ) -> None:
        from vllm import LLM

        self.model = model
        args = dict(model=model, dtype=dtype, enforce_eager=enforce_eager, enable_prefix_caching=enable_prefix_caching,
                    seed=seed, max_model_len=max_model_len)
        args.update(engine_args or {})
        self.llm = LLM(**args)
        self.description = f"vllm.LLM({model})"

    def run(self, requests: Sequence[EngineRequest]) -> list[EngineResult]:
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt

        if not requests:
            return []
        prompts, params = [], []
        for r in requests:
            prompts.append(TokensPrompt(prompt_token_ids=list(r.prompt)))
            params.append(VSamplingParams(
                n=1, seed=r.seed, max_tokens=max(r.max_tokens, 1), temperature=r.temperature, top_p=r.top_p,
                top_k=r.top_k, stop_token_ids=list(r.stop_token_ids), logprobs=0 if r.max_tokens else None,
                prompt_logprobs=0 if r.prompt_logprobs else None, detokenize=False,
                # vLLM skips the prefix cache for prompt-logprob requests unless told otherwise; we read it
                # and take the cached positions' values from elsewhere (see VllmLogprobCache).
                skip_reading_prefix_cache=not r.read_cache,
            ))
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        results = []
        for r, o in zip(requests, outs):
            c = o.outputs[0]
            toks = list(c.token_ids) if r.max_tokens else []
            plp = None
            if r.prompt_logprobs:
                plp = [math.nan] * len(r.prompt)
                cached = o.num_cached_tokens or 0
                for p, d in enumerate(o.prompt_logprobs or []):
                    # Positions 1..cached came from the cache: the engine left them unset.
                    if p == 0 or d is None or p <= cached:
                        continue
                    lp = d.get(r.prompt[p])
                    if lp is not None:
                        plp[p] = float(lp.logprob)
            results.append(EngineResult(
                toks, _sampled_logprobs(toks, c.logprobs), c.finish_reason or "", c.stop_reason,
                len(o.prompt_token_ids or r.prompt), o.num_cached_tokens, plp,
            ))
        return results

    def reset_prefix_cache(self) -> None:
        """Forget every cached block (benchmarks: measure from a cold cache)."""
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        """Stop the engine-core subprocess now (it otherwise stops when the interpreter exits)."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()

    def served_model(self) -> str:
        return self.model

    def encode_text(self, text: str) -> list[int]:
        return list(self.llm.get_tokenizer()(text, add_special_tokens=False)["input_ids"])

    def vocab_size(self) -> int | None:
        return len(self.llm.get_tokenizer())


class ServerEngine:
    """An OpenAI-compatible server (``vllm serve``; SGLang serves the same API) at ``url``.

    Requests go to ``/v1/completions`` with token-id prompts, concurrently (``workers``), so the
    server batches them; each retries on connection errors with bounded timeouts.

    Args:
        url: e.g. ``http://127.0.0.1:8000`` (a trailing ``/v1`` is accepted).
        model: the served model name (``vllm serve <model>`` or its ``--served-model-name``);
            ``None``: the only model the server lists.
    """

    def __init__(
        self,
        url: str,
        model: str | None = None,
        timeout: float = 600.0,
        connect_timeout: float = 10.0,
        retries: int = 3,
        workers: int = 64,
        api_key: str | None = None,
        setting: str = "policy.vllm",
    ) -> None:
        self.url = url.rstrip("/").removesuffix("/v1")
        self.setting = setting  # the config block named in errors (the scorer's engine reuses this class)
        self.timeout, self.connect_timeout, self.retries, self.workers = timeout, connect_timeout, retries, workers
        self.api_key = api_key
        listed = self._models()
        names = [m.get("id") for m in listed]
        if model is None:
            if len(names) != 1:
                raise EngineError(f"vLLM server {self.url} serves {names}: set {setting}.served_model")
            model = names[0]
        elif model not in names:
            roots = {m.get("root") for m in listed}
            if model not in roots:
                raise EngineError(f"vLLM server {self.url} serves {names}, not {model!r}: point the recipe at the "
                                  f"server of that model or set {setting}.served_model to the served name")
            model = next(m["id"] for m in listed if m.get("root") == model)
        self.model = model
        self.description = f"vLLM server {self.url} ({model})"

    # -- HTTP ---------------------------------------------------------------------------------------
    def _call(self, path: str, payload: dict[str, Any] | None = None, timeout: float | None = None,
              raw: bool = False) -> Any:
        url = self.url + path
        data = json.dumps(payload).encode() if payload is not None else None
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last: Exception | None = None
        for attempt in range(self.retries):
            req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
            try:
                with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                    body = resp.read()
                    return body.decode(errors="replace") if raw else json.loads(body)
            except urllib.error.HTTPError as e:  # the server answered: retrying will not help
                body = e.read().decode(errors="replace")[:500]
                raise EngineError(f"vLLM server {url} answered HTTP {e.code}: {body}") from None
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
                last = e
                time.sleep(min(2.0 * (attempt + 1), 5.0))
        raise EngineError(
            f"vLLM server unreachable at {url} after {self.retries} attempts ({last}); start it with "
            f"`vllm serve <model>` or fix {self.setting}.url"
        )

    def _models(self) -> list[dict[str, Any]]:
        return list(self._call("/v1/models", timeout=self.connect_timeout).get("data", []))

    def run(self, requests: Sequence[EngineRequest]) -> list[EngineResult]:
        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=min(self.workers, len(requests))) as pool:
            return list(pool.map(self._one, requests))

    def _one(self, r: EngineRequest) -> EngineResult:
        payload: dict[str, Any] = {
            "model": self.model, "prompt": list(r.prompt), "max_tokens": max(r.max_tokens, 1), "n": 1,
            "temperature": r.temperature, "top_p": r.top_p, "top_k": r.top_k, "seed": r.seed,
            "stop_token_ids": list(r.stop_token_ids), "logprobs": 0, "return_token_ids": True,
            "skip_special_tokens": False,
        }
        if r.prompt_logprobs:
            payload["prompt_logprobs"] = 0
        out = self._call("/v1/completions", payload)
        choice = out["choices"][0]
        toks = [int(t) for t in (choice.get("token_ids") or [])] if r.max_tokens else []
        lps = (choice.get("logprobs") or {}).get("token_logprobs") or [math.nan] * len(toks)
        plp = None
        if r.prompt_logprobs:
            plp = [math.nan] * len(r.prompt)
            for p, d in enumerate(choice.get("prompt_logprobs") or []):
                if p and d and str(r.prompt[p]) in d:
                    plp[p] = float(d[str(r.prompt[p])]["logprob"])
        usage = out.get("usage") or {}
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        return EngineResult(toks, [float(x) for x in lps[: len(toks)]], choice.get("finish_reason") or "",
                            choice.get("stop_reason"), int(usage.get("prompt_tokens", len(r.prompt))), cached, plp)

    def served_model(self) -> str:
        return self.model

    def encode_text(self, text: str) -> list[int]:
        out = self._call("/tokenize", {"model": self.model, "prompt": text, "add_special_tokens": False})
        return [int(t) for t in out["tokens"]]

    def vocab_size(self) -> int | None:
        return None  # not reported by the API; the tokenization probe checks agreement


def make_engine(vc: Any, path: str, dtype: str, trust_remote_code: bool, seed: int, local_cls: type,
                server_cls: type, setting: str = "policy", server: str = "server") -> Any:
    """The engine a ``policy.vllm`` / ``scorer.vllm`` block names: ``server_cls`` on the server at ``vc.url``, else
    ``local_cls`` (``vllm.LLM``) in this process. ``setting`` names the block in the error when vLLM is missing."""
    if vc.url:
        return server_cls(vc.url, vc.served_model, timeout=vc.timeout, retries=vc.retries, workers=vc.workers)
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise ImportError(f"{setting}.backend: vllm in-process needs vLLM: bash scripts/install.sh --vllm (CPU) or "
                          f"pip install vllm (GPU); or set {setting}.vllm.url to a running {server}") from e
    args = dict(vc.engine_args)
    args.setdefault("trust_remote_code", trust_remote_code)
    return local_cls(path, dtype=dtype, enforce_eager=vc.enforce_eager, enable_prefix_caching=vc.enable_prefix_caching,
                     max_model_len=vc.max_model_len, seed=seed, engine_args=args)


def check_engine_tokenizer(engine: Any, tokenizer: Any, who: str = "policy", model_setting: str = "policy.model") -> None:
    """Refuse an engine whose tokenizer disagrees with the local one (ids are sent, so they must mean the same)."""
    local = list(tokenizer(TOKENIZER_PROBE, add_special_tokens=False)["input_ids"])
    remote = engine.encode_text(TOKENIZER_PROBE)
    vocab = engine.vocab_size()
    if remote != local or (vocab is not None and vocab != len(tokenizer)):
        raise ValueError(
            f"the engine's model and the {who}'s tokenizer disagree ({engine.description}: "
            f"{len(remote)} probe tokens, vocabulary {vocab}; local tokenizer {tokenizer.name_or_path!r}: "
            f"{len(local)} probe tokens, vocabulary {len(tokenizer)}); serve the same model as "
            f"{model_setting}, or set {model_setting} to the served checkpoint"
        )


class VllmPolicy:
    """A policy sampled by a vLLM engine (the ``vllm`` backend). See the module docstring.

    Args:
        engine: :class:`LocalEngine` or :class:`ServerEngine` (anything with ``run(requests)``).
        tokenizer: the local tokenizer of the same model (renders prompts, decodes responses).
        delimiter / stop_token_ids / prompt_format: as for ``decoding.policy.Policy``.
        check_tokenizer: refuse an engine whose tokenizer disagrees with ``tokenizer``.
    """

    backend = "vllm"
    token_level = False

    def __init__(
        self,
        engine: Any,
        tokenizer: Any,
        delimiter: str = "\n",
        stop_token_ids: Sequence[int] = (),
        prompt_format: PrefixFormat | None = None,
        meter: Meter | None = None,
        generation_eos: Sequence[int] = (),
        check_tokenizer: bool = True,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        if check_tokenizer:  # first: a wrong model is the error worth reporting
            self.check_tokenizer()
        self.format = prompt_format or PrefixFormat(max_prompt_tokens=None, max_response_tokens=None)
        self.stop_ids, self.pad_id = stop_and_pad_ids(tokenizer, stop_token_ids, generation_eos)
        self.delimiter = delimiter
        self._delimiter_ids: dict[str, list[int]] = {}
        self.meter = meter or Meter()
        self.device = torch.device("cpu")  # where returned tensors live (the engine's device is its own)

    def check_tokenizer(self) -> None:
        """Refuse an engine serving a model whose tokenizer disagrees with the local one."""
        check_engine_tokenizer(self.engine, self.tokenizer)

    # -- prompts -------------------------------------------------------------------------------------
    def encode(self, messages: Sequence[Message]) -> list[int]:
        return encode_prompt(self.tokenizer, self.format, messages)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def delimiter_ids(self) -> list[int]:
        if self.delimiter not in self._delimiter_ids:
            mask = delimiter_token_mask(self.tokenizer, self.delimiter, len(self.tokenizer))
            self._delimiter_ids[self.delimiter] = mask.nonzero().squeeze(1).tolist()
        return self._delimiter_ids[self.delimiter]

    # -- search interface ------------------------------------------------------------------------------
    def prefill(self, prompts: Sequence[Sequence[int]], groups: Sequence[int] | None = None) -> TokenState:
        """The prompts as a state; nothing runs yet (the engine prefills them with the first sample,
        once per shared prefix thanks to prefix caching)."""
        groups = list(range(len(prompts))) if groups is None else list(groups)
        return TokenState([list(p) for p in prompts], groups)

    def sample(
        self,
        state: TokenState,
        seeds: Sequence[int],
        params: SamplingParams,
        max_tokens: int | Sequence[int],
        stop_at_delimiter: bool = False,
        feed_final: bool = True,
        offsets: Sequence[int] | None = None,
    ) -> list[Sample]:
        """Sample a continuation for every row of ``state`` (its ids are extended in place).

        ``feed_final`` has no cost here (nothing to feed: the engine re-reads the ids next time).
        ``offsets[i] > 0`` (row ``i`` continues a candidate that already drew that many tokens from its
        seed): an engine request cannot resume a seed's stream, so the request gets a seed derived from
        (seed, offset) -- independent of the earlier segment's draws, as a fresh stream should be.
        """
        if offsets is not None:
            seeds = [int(s) if not o else candidate_seed(int(s), "continue", int(o)) for s, o in zip(seeds, offsets)]
        rows = len(state)
        if len(seeds) != rows:
            raise ValueError(f"sample got {len(seeds)} seeds for {rows} rows")
        budgets = [max_tokens] * rows if isinstance(max_tokens, int) else [int(b) for b in max_tokens]
        samples = [Sample([], []) for _ in range(rows)]
        delim = set(self.delimiter_ids()) if stop_at_delimiter else set()
        stops = set(self.stop_ids)
        stop_list = sorted(stops | delim)
        todo = [i for i in range(rows) if budgets[i] > 0]
        for i in range(rows):
            if budgets[i] <= 0:
                samples[i].budget = True
        requests = [
            EngineRequest(list(state.ids[i]), budgets[i], int(seeds[i]) % (2**63), params.temperature, params.top_p,
                          params.top_k, stop_list)
            for i in todo
        ]
        results = self.engine.run(requests)
        groups = [state.groups[i] for i in todo]
        for i, res in zip(todo, results):
            s = samples[i]
            toks, lps = list(res.token_ids), list(res.logprobs)
            last = toks[-1] if toks else None
            if res.finish_reason == "stop" and last is not None and last in stops:
                s.eos, s.end_ids, s.end_logprobs = True, [last], [lps[-1]]
                toks, lps = toks[:-1], lps[:-1]
            elif res.finish_reason == "stop" and last is None and isinstance(res.stop_reason, int):
                # A stop token the engine did not return (hidden special token): the log-prob is unknown.
                s.eos, s.end_ids, s.end_logprobs = True, [int(res.stop_reason)], [math.nan]
            elif stop_at_delimiter and last is not None and last in delim:
                s.delimiter = True
            else:
                s.budget = True  # the token budget (or the engine's max_model_len) ended it
            s.token_ids, s.logprobs = toks, lps
            state.ids[i].extend(toks)
        self._count(groups, results, "policy_tokens_prefilled", "policy_tokens_cached")
        self.meter.add("policy_tokens_generated", groups, [len(r.token_ids) for r in results])
        return samples

    def _count(self, groups: Sequence[int], results: Sequence[EngineResult], computed: str, cached: str) -> None:
        hits = [r.cached_tokens or 0 for r in results]
        self.meter.add(computed, groups, [r.prompt_tokens - h for r, h in zip(results, hits)])
        self.meter.add(cached, groups, hits)

    def logprob_cache(
        self, max_batch_tokens: int = 16384, max_batch_size: int = 64, enabled: bool = True,
        meter: Meter | None = None,
    ) -> VllmLogprobCache:
        """Teacher-forced log-probs from the engine's prompt log-probs (REAR's sums)."""
        return VllmLogprobCache(self, enabled=enabled, meter=meter or self.meter)

    def sequence_logprobs(self, prompt: Sequence[int], response: Sequence[int]) -> torch.Tensor:
        """Log-probs of ``response`` after ``prompt`` (one uncached prompt-logprob request; for checks)."""
        res = self.engine.run([EngineRequest(list(prompt) + list(response), 0, prompt_logprobs=True,
                                             read_cache=False)])[0]
        return torch.tensor(res.prompt_logprobs[len(prompt):], dtype=torch.float32)


class VllmLogprobCache:
    """``values(seqs)[j][p] = log pi(seqs[j][p] | seqs[j][:p])`` from the engine's prompt log-probs.

    One request per sequence (``max_tokens = 1``, ``prompt_logprobs = 0``), all submitted at once.
    With ``enabled`` the requests read the engine's prefix cache (the prompt shared by a prompt's
    candidates is computed once). The engine computes no log-prob for a position it served from
    the cache; those are taken from the previous call's or this call's other sequences when they
    share that prefix (a search step extends the previous step's candidates), and any still
    missing sequence is recomputed without reading the cache -- so the values equal an uncached
    computation up to float noise. ``starts[j]``: positions before it are not needed (REAR needs
    only the response). A server's prompt-logprob requests never read the cache (vLLM's default
    for them; the API has no switch).
    """

    def __init__(self, policy: VllmPolicy, enabled: bool = True, meter: Meter | None = None,
                 counter: str = "scorer_tokens") -> None:
        self.policy = policy
        self.enabled = enabled
        self.meter = meter or policy.meter
        self.counter = counter
        self.kept: list[tuple[np.ndarray, np.ndarray]] = []
        self.requests = 0

    def reset(self) -> None:
        self.kept = []

    def values(
        self, seqs: Sequence[Sequence[int]], groups: Sequence[int] | None = None, starts: Sequence[int] | None = None,
    ) -> list[torch.Tensor]:
        groups = list(range(len(seqs))) if groups is None else list(groups)
        starts = [1] * len(seqs) if starts is None else [max(int(s), 1) for s in starts]
        if not seqs:
            return []
        first = self._run(range(len(seqs)), seqs, groups, read_cache=self.enabled)
        vals: list[np.ndarray] = [np.asarray(first[j], dtype=np.float64) for j in range(len(seqs))]
        complete = [j for j in range(len(seqs)) if not np.isnan(vals[j][starts[j]:]).any()]
        donors = self.kept + [(np.asarray(seqs[j]), vals[j]) for j in complete]
        missing = []
        for j in range(len(seqs)):
            if j in complete:
                continue
            if not self._fill(np.asarray(seqs[j]), vals[j], starts[j], donors):
                missing.append(j)
        if missing:
            again = self._run(missing, seqs, groups, read_cache=False)
            for j, v in zip(missing, again):
                vals[j] = np.asarray(v, dtype=np.float64)
        out = []
        for v in vals:
            v = v.copy()
            v[0] = 0.0
            out.append(torch.tensor(v, dtype=torch.float32))
        if self.enabled:
            self.kept = [(np.asarray(s), v) for s, v in zip(seqs, vals)]
        return out

    @staticmethod
    def _fill(seq: np.ndarray, v: np.ndarray, start: int, donors: list[tuple[np.ndarray, np.ndarray]]) -> bool:
        """Fill ``v``'s missing positions from sequences sharing the prefix; True when none is left."""
        for ids, dv in donors:
            holes = np.isnan(v)
            holes[:start] = False
            if not holes.any():
                break
            n = min(len(ids), len(seq))
            eq = ids[:n] == seq[:n]
            lcp = n if eq.all() else int(np.argmin(eq))
            # Position p's value depends on seq[:p + 1] only: a donor sharing seq[:lcp] has it for p < lcp.
            idx = np.nonzero(holes[:lcp])[0]
            got = dv[idx]
            ok = ~np.isnan(got)
            v[idx[ok]] = got[ok]
        tail = v[start:]
        return not np.isnan(tail).any()

    def _run(self, rows: Sequence[int], seqs: Sequence[Sequence[int]], groups: Sequence[int],
             read_cache: bool) -> list[list[float]]:
        reqs = [EngineRequest(list(seqs[j]), 0, prompt_logprobs=True, read_cache=read_cache) for j in rows]
        res = self.policy.engine.run(reqs)
        self.requests += len(reqs)
        g = [groups[j] for j in rows]
        hits = [r.cached_tokens or 0 for r in res]
        self.meter.add(self.counter, g, [r.prompt_tokens - h for r, h in zip(res, hits)])
        self.meter.add("scorer_tokens_cached", g, hits)
        return [list(r.prompt_logprobs or [math.nan] * len(seqs[j])) for r, j in zip(res, rows)]

