"""``sp-prm prepare``: preference pairs -> weighted partial-response pairs for SP-PRM.

Pipeline (paper sections 4.1-4.2):

1. load pairs into one schema (:mod:`data_prep.loaders`);
2. tokenize each side once with the tokenizer of the model to be trained and
   cut both responses at TLT or SST positions (:mod:`data_prep.truncation`);
3. score both prefixes with a frozen reference RM -- one forward pass per
   response for decoder RMs, one pass per prefix for encoders
   (:mod:`sp_prm.scoring`) -- keep a pair only if the reference prefers the
   chosen prefix, and weight it by 1/H (:mod:`data_prep.weighting`). Without a
   reference RM the output is the paper's unweighted ablation data (Eq. 2).
4. write an Arrow dataset (``save_to_disk``) with a card (``card.json`` +
   ``README.md``) and a histogram of reference gaps.

The work is done in chunks of pairs saved under a staging folder next to the
output; a killed run restarted with the same parameters resumes from the last
finished chunk. The output path only ever holds a complete result: it is moved
into place at the end. One run writes an output at a time: a second ``prepare``
into the same ``output_dir`` fails at once naming the running one (lock file
``.<name>.lock`` next to the output, dropped by the OS when its holder exits or
is killed). A failed run removes its staging folder unless it holds finished
chunks that a rerun resumes from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, Features, List, Value, concatenate_datasets, load_from_disk
from tqdm.auto import tqdm

from data_prep import __version__
from data_prep.loaders import BUILTIN_SOURCES, PreferenceSource, Sample, format_skips, load_preferences
from data_prep.truncation import apply_past_end, pair_rng, sst_positions, tlt_positions
from data_prep.weighting import DEFAULT_CAP, binary_entropy_of_gap, preference_weights
from sp_prm.errors import InputError, OutputExistsError
from sp_prm.formatting import EncodedResponse, PrefixFormat, PromptTooLong, encode
from sp_prm.models import load_reward_model, load_tokenizer
from sp_prm.prefix_scoring import PrefixScorer
from sp_prm.scoring import RewardScorer

logger = logging.getLogger("sp_prm.prepare")

# Explicit schema: an empty chunk (or an unweighted run's null reference columns) keeps its types.
FEATURES = Features({
    "id": Value("string"),
    "prompt": List({"role": Value("string"), "content": Value("string")}),
    "chosen": Value("string"),
    "rejected": Value("string"),
    "position": Value("int32"),
    "chosen_length": Value("int32"),
    "rejected_length": Value("int32"),
    "chosen_complete": Value("bool"),
    "rejected_complete": Value("bool"),
    "chosen_ids": List(Value("int32")),
    "rejected_ids": List(Value("int32")),
    "ref_chosen_reward": Value("float64"),
    "ref_rejected_reward": Value("float64"),
    "ref_gap": Value("float64"),
    "weight": Value("float64"),
})


@dataclass
class PrepareConfig(PreferenceSource):
    """Build SP-PRM partial-pair datasets (TLT / SST) with reference-RM weights."""

    # source, format, columns, split, data_dir, subset, eval_fraction, sample, limit, on_bad_rows: PreferenceSource's.
    model_name_or_path: str = field(
        default="builtin:all-minilm-l6-v2",
        metadata={"help": "The model to be trained as a PRM: its tokenizer defines the token space of the cuts."},
    )
    truncation: str = field(default="sst", metadata={"help": "sst (stochastic sampling) or tlt (every token)."})
    sst_k: int = field(default=5, metadata={"help": "SST K: k ~ U{0..2K} positions per pair (paper: K = 5)."})
    sst_unique: bool = field(default=False, metadata={"help": "Drop repeated SST positions within a pair."})
    past_end: str = field(
        default="clip",
        metadata={"help": "Positions past the shorter response: clip (it stays complete) or drop."},
    )
    include_full_pair: bool = field(
        default=False, metadata={"help": "Also emit the complete pair (position T) when not sampled."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the SST draws (per pair, order independent)."})
    reference_model: str | None = field(
        default=None,
        metadata={"help": "Frozen reference RM (any sequence classifier). None: unweighted data (Eq. 2)."},
    )
    reference_dtype: str = field(default="float32", metadata={"help": "float32, bfloat16 or float16."})
    reference_device: str | None = field(default=None, metadata={"help": "cpu / cuda; default: cuda if available."})
    reference_causal: bool | None = field(
        default=None, metadata={"help": "Force one-pass (true) or per-prefix (false) scoring; null detects it."}
    )
    allow_untrained_head: bool = field(
        default=False,
        metadata={"help": "Accept a reference_model whose score head is newly initialised (a base LM: random "
                  "weights, no preference signal; for demos and tests). Off: such a model is refused."},
    )
    reference_batch_tokens: int = field(default=16384, metadata={"help": "Padded tokens per reference forward."})
    weight_cap: float | None = field(
        default=DEFAULT_CAP, metadata={"help": "Upper bound on 1/H (H -> 0 as the gap grows); null: no cap."}
    )
    weight_normalize: str = field(default="none", metadata={"help": "none, or mean (kept weights rescaled to mean 1)."})
    prefix: PrefixFormat = field(default_factory=PrefixFormat, metadata={"help": "Prefix representation."})
    output_dir: str = field(default="outputs/prepared", metadata={"help": "Where the dataset is written."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing output instead of reusing it."})
    dry_run: bool = field(
        default=False,
        metadata={"help": "Check the config, the source (every row read) and that the models load, then stop: "
                  "nothing is scored or written."},
    )
    chunk_size: int = field(default=1000, metadata={"help": "Pairs per resumable chunk."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the hub."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.prefix, dict):
            self.prefix = PrefixFormat(**self.prefix)
        if self.truncation not in ("sst", "tlt"):
            raise ValueError(f"truncation must be 'sst' or 'tlt', got {self.truncation!r}")
        if self.past_end not in ("clip", "drop"):
            raise ValueError(f"past_end must be 'clip' or 'drop', got {self.past_end!r}")
        if self.sst_k < 0:
            raise ValueError(f"sst_k must be >= 0, got {self.sst_k}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.weight_normalize not in ("none", "mean"):
            raise ValueError(f"weight_normalize must be 'none' or 'mean', got {self.weight_normalize!r}")


def _source_signature(source: str) -> Any:
    path = Path(str(BUILTIN_SOURCES.get(source, source)))
    if path.is_dir():  # a folder of files: each file's size and time
        return [[str(f.resolve()), f.stat().st_size, int(f.stat().st_mtime)] for f in sorted(path.rglob("*")) if f.is_file()]
    if path.exists():
        stat = path.stat()
        return [str(path.resolve()), stat.st_size, int(stat.st_mtime)]
    return source


def fingerprint(config: PrepareConfig) -> str:
    params = asdict(config)
    for key in ("output_dir", "overwrite", "chunk_size", "reference_device", "reference_batch_tokens", "dry_run",
                "allow_untrained_head"):  # the last one refuses or allows a model, it never changes the data
        params.pop(key)
    # Fields added later count only when set away from their default, so earlier outputs keep their fingerprint.
    for key, default in (("on_bad_rows", "error"), ("sample", asdict(Sample()))):
        if params.get(key) == default:
            params.pop(key)
    params["prefix"] = config.prefix.legacy_dict()  # end_marker modes hash as the older booleans
    params["source_signature"] = _source_signature(config.source)
    params["version"] = __version__
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Preparer:
    """Turns normalised pairs into partial pairs; holds the tokenizer and reference scorer."""

    def __init__(self, config: PrepareConfig) -> None:
        self.config = config
        self.tokenizer = load_tokenizer(config.model_name_or_path, config.trust_remote_code)
        self.reference: PrefixScorer | None = None
        if config.reference_model:
            ref_tokenizer = load_tokenizer(config.reference_model, config.trust_remote_code)
            torch.manual_seed(config.seed)  # a freshly initialised score head is then reproducible
            model = load_reward_model(
                config.reference_model, config.reference_dtype, config.reference_device,
                config.trust_remote_code, pad_token_id=ref_tokenizer.pad_token_id,
                allow_untrained_head=config.allow_untrained_head,
            )
            scorer = RewardScorer(
                model, ref_tokenizer.pad_token_id, config.reference_batch_tokens, causal=config.reference_causal
            )
            self.reference = PrefixScorer(scorer, ref_tokenizer, self.tokenizer, config.prefix)
        self.counts: Counter = Counter()

    def _positions(self, pair_id: str, chosen: EncodedResponse, rejected: EncodedResponse) -> list[int]:
        c = self.config
        if c.truncation == "tlt":
            positions = tlt_positions(chosen.length, rejected.length)
        else:
            positions = sst_positions(chosen.length, rejected.length, c.sst_k, pair_rng(c.seed, pair_id), c.sst_unique)
        positions = apply_past_end(positions, chosen.length, rejected.length, c.past_end)
        full = max(chosen.length, rejected.length)
        if c.include_full_pair and full not in positions:
            positions.append(full)
        return positions

    def process(self, pairs: Dataset) -> Dataset:
        c, tok = self.config, self.tokenizer
        rows: dict[str, list] = {k: [] for k in (
            "id", "prompt", "chosen", "rejected", "position", "chosen_length", "rejected_length",
            "chosen_complete", "rejected_complete", "chosen_ids", "rejected_ids",
        )}
        sides: list[EncodedResponse] = []
        side_positions: list[list[int]] = []
        side_messages: list[list[dict]] = []
        side_texts: list[str] = []  # original responses: a reference with another tokenizer reads their own text
        for pair in pairs:
            try:
                chosen = encode(tok, pair["prompt"], pair["chosen"], c.prefix)
                rejected = encode(tok, pair["prompt"], pair["rejected"], c.prefix)
            except PromptTooLong:
                self.counts["skipped_prompt_too_long"] += 1
                continue
            if chosen.length == 0 or rejected.length == 0:
                self.counts["skipped_empty_after_tokenization"] += 1
                continue
            self.counts["pairs_used"] += 1
            self.counts["prompts_truncated"] += chosen.prompt_truncated
            self.counts["responses_truncated"] += chosen.response_truncated + rejected.response_truncated
            positions = self._positions(pair["id"], chosen, rejected)
            if not positions:
                self.counts["pairs_without_positions"] += 1
                continue
            texts = {}
            for name, enc in (("chosen", chosen), ("rejected", rejected)):
                texts[name] = [tok.decode(enc.content_ids[:t], skip_special_tokens=False) for t in positions]
                sides.append(enc)
                side_positions.append(positions)
                side_messages.append(pair["prompt"])
                side_texts.append(pair[name])
            for j, t in enumerate(positions):
                rows["id"].append(pair["id"])
                rows["prompt"].append(pair["prompt"])
                rows["chosen"].append(texts["chosen"][j])
                rows["rejected"].append(texts["rejected"][j])
                rows["position"].append(t)
                rows["chosen_length"].append(min(t, chosen.length))
                rows["rejected_length"].append(min(t, rejected.length))
                rows["chosen_complete"].append(chosen.is_complete(t))
                rows["rejected_complete"].append(rejected.is_complete(t))
                rows["chosen_ids"].append(chosen.sequence_for(c.prefix, t))
                rows["rejected_ids"].append(rejected.sequence_for(c.prefix, t))
        n = len(rows["id"])
        self.counts["partial_pairs"] += n
        if self.reference is None or n == 0:
            rows["ref_chosen_reward"] = [None] * n
            rows["ref_rejected_reward"] = [None] * n
            rows["ref_gap"] = [None] * n
            rows["weight"] = [1.0] * n
            return Dataset.from_dict(rows, features=FEATURES)
        rewards = self.reference.score(sides, side_positions, side_messages, side_texts)
        self.counts["reference_scoring_one_pass"] = int(self.reference.one_pass)
        chosen_r = torch.cat(rewards[0::2]) if rewards else torch.empty(0)
        rejected_r = torch.cat(rewards[1::2]) if rewards else torch.empty(0)
        for name, values in (("chosen", chosen_r), ("rejected", rejected_r)):
            bad = (~torch.isfinite(values)).nonzero().flatten()
            if len(bad):
                i = int(bad[0])
                raise ValueError(
                    f"reference RM gave a non-finite reward ({float(values[i])}) for the {name} prefix of pair "
                    f"{rows['id'][i]!r} at position {rows['position'][i]}; check the model and its dtype"
                )
        rows["ref_chosen_reward"] = chosen_r.tolist()
        rows["ref_rejected_reward"] = rejected_r.tolist()
        rows["ref_gap"] = (chosen_r - rejected_r).tolist()
        rows["weight"] = [0.0] * n  # set in prepare(): normalisation needs every chunk
        return Dataset.from_dict(rows, features=FEATURES)


def _gap_histogram(gaps: np.ndarray, path: Path) -> dict[str, list]:
    counts, edges = np.histogram(gaps, bins=40) if len(gaps) else (np.zeros(0), np.zeros(0))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(gaps, bins=40, color="#4c72b0")
        ax.axvline(0, color="black", lw=1)
        ax.set_xlabel("reference reward gap r(chosen prefix) - r(rejected prefix)")
        ax.set_ylabel("partial pairs")
        ax.set_title("Reference gaps (pairs right of 0 are kept)")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
    except Exception as err:  # plotting is a convenience, never a failure
        logger.warning("could not draw the gap histogram: %s", err)
    return {"counts": [int(x) for x in counts], "edges": [float(x) for x in edges]}


def _card_readme(card: dict[str, Any]) -> str:
    c = card["config"]
    lines = [
        "# SP-PRM partial-pair dataset",
        "",
        f"Built by `sp-prm prepare` (sp-prm {card['version']}) from `{c['source']}` with "
        f"{c['truncation'].upper()} truncation in the token space of `{c['model_name_or_path']}`.",
        "",
        "Reference RM: " + (f"`{c['reference_model']}` ({card['stats']['reference_scoring']})" if c["reference_model"]
                            else "none (unweighted ablation data, Eq. 2: weight 1, nothing filtered)"),
        "",
        "## Counts",
        "",
        *[f"- {k}: {v}" for k, v in card["counts"].items()],
        "",
        "## Skipped rows",
        "",
        f"- source rows read {card['loader']['rows_read']}, kept {card['loader']['rows_kept']}; skipped by the "
        f"loader: {format_skips(card['loader']['skipped'])}",
        f"- pairs skipped at tokenization: {format_skips(tokenization_skips(card['counts']))}",
        "",
        "## Statistics",
        "",
        *[f"- {k}: {v}" for k, v in card["stats"].items() if k != "gap_histogram"],
        "",
        "## Parameters",
        "",
        "```json",
        json.dumps(c, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def tokenization_skips(counts: dict[str, int]) -> dict[str, int]:
    """The pairs ``Preparer.process`` dropped, by reason (from the summed chunk counts)."""
    out = {k.removeprefix("skipped_"): v for k, v in counts.items() if k.startswith("skipped_")}
    if counts.get("pairs_without_positions"):
        out["without_positions"] = counts["pairs_without_positions"]
    return out


def staging_dir(out: Path, fp: str) -> Path:
    return out.parent / f".{out.name}.partial-{fp}"


def _drop_if_nothing_to_resume(staging: Path) -> None:
    """A failed run's staging folder goes unless it holds finished chunks a rerun can resume from."""
    if not staging.exists():
        return
    finished = (staging / "chunk_counts.json").exists() or any((staging / "chunks").glob("chunk-*"))
    if finished:
        logger.warning("kept %s: it holds finished chunks; rerunning with the same parameters resumes from them",
                       staging)
    else:
        shutil.rmtree(staging, ignore_errors=True)


def prepare(config: PrepareConfig) -> Path:
    """Run the pipeline; returns the output folder (reused when already built with the same parameters).

    One run at a time per output: a second ``prepare`` into the same ``output_dir`` fails at once (the
    lock ``.<name>.lock`` beside it is released when the first ends or dies). A failed run removes its
    staging folder unless it holds finished chunks to resume from.
    """
    from sp_prm.staging import output_lock

    out = Path(config.output_dir)
    if config.dry_run:  # writes nothing, so it takes no lock
        return _prepare(config, out)
    with output_lock(out, "prepare"):
        try:
            return _prepare(config, out)
        except BaseException:
            _drop_if_nothing_to_resume(staging_dir(out, fingerprint(config)))
            raise


def _prepare(config: PrepareConfig, out: Path) -> Path:
    fp = fingerprint(config)
    if out.exists():
        card_path = out / "card.json"
        previous = json.loads(card_path.read_text()).get("fingerprint") if card_path.exists() else None
        if previous == fp and not config.overwrite:
            logger.info("reusing %s (same parameters; --overwrite to rebuild)", out)
            print(f"[prepare] {out} already holds this dataset (fingerprint {fp}); reusing it. --overwrite to rebuild.")
            return out
        if not config.overwrite:
            raise OutputExistsError(
                f"{out} exists and was built with other parameters (or is not a prepared dataset)",
                hint="pass --overwrite to replace it or choose another --output_dir",
            )
    started = time.time()
    pairs, report = load_preferences(config.source_block())
    if len(pairs) == 0:
        raise InputError(f"{config.source}: no usable preference pairs ({report.summary()})")
    preparer = Preparer(config)
    if config.dry_run:
        print(f"[prepare] dry run: config, source and models are fine ({report.summary()}; tokenizer "
              f"{config.model_name_or_path}, reference {config.reference_model or 'none'}); nothing was written")
        return out
    staging = staging_dir(out, fp)
    chunks_dir = staging / "chunks"
    chunks_dir.mkdir(parents=True, exist_ok=True)
    counts_path = staging / "chunk_counts.json"
    chunk_counts: dict[str, dict] = json.loads(counts_path.read_text()) if counts_path.exists() else {}
    n_chunks = (len(pairs) + config.chunk_size - 1) // config.chunk_size
    parts = []
    with tqdm(total=len(pairs), desc="prepare", unit="pair") as bar:
        for k in range(n_chunks):
            path = chunks_dir / f"chunk-{k:05d}"
            lo, hi = k * config.chunk_size, min(len(pairs), (k + 1) * config.chunk_size)
            if str(k) in chunk_counts and (path.exists() or chunk_counts[str(k)].get("empty")):
                if path.exists():
                    parts.append(load_from_disk(str(path)))
                bar.update(hi - lo)
                continue
            preparer.counts = Counter()
            part = preparer.process(pairs.select(range(lo, hi)))
            # datasets cannot reload a 0-row save (save_to_disk writes no shard for it since
            # huggingface/datasets#7912; fix proposed in huggingface/datasets#8385; datasets 5.2 here),
            # so an empty chunk is only recorded.
            if len(part):
                tmp = chunks_dir / f".tmp-{k:05d}"
                shutil.rmtree(tmp, ignore_errors=True)
                part.save_to_disk(str(tmp))
                os.replace(tmp, path)
                parts.append(load_from_disk(str(path)))
            chunk_counts[str(k)] = {**preparer.counts, "empty": int(not len(part))}
            counts_path.write_text(json.dumps(chunk_counts))
            bar.update(hi - lo)
    if not parts:
        raise ValueError("no partial pair was produced; nothing to write (see the counts: "
                         + json.dumps(chunk_counts) + ")")
    data = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    counts: Counter = Counter()
    for c in chunk_counts.values():
        counts.update({k: v for k, v in c.items() if k not in ("reference_scoring_one_pass", "empty")})
    one_pass = any(c.get("reference_scoring_one_pass") for c in chunk_counts.values())

    stats: dict[str, Any] = {}
    if config.reference_model and len(data):
        chosen_r = torch.tensor(data["ref_chosen_reward"], dtype=torch.float32)
        rejected_r = torch.tensor(data["ref_rejected_reward"], dtype=torch.float32)
        keep, weight = preference_weights(chosen_r, rejected_r, config.weight_cap, config.weight_normalize)
        data = data.remove_columns("weight").add_column("weight", weight.tolist(), feature=Value("float64"))
        data = data.select(keep.nonzero().flatten().tolist())
        gaps = (chosen_r - rejected_r).numpy()
        kept_w = weight[keep]
        stats = {
            "reference_scoring": "one pass per response" if one_pass else "one pass per prefix",
            "kept_fraction": round(float(keep.float().mean()), 4),
            "weight_mean": round(float(kept_w.mean()), 4) if len(kept_w) else None,
            "weight_max": round(float(kept_w.max()), 4) if len(kept_w) else None,
            "weight_min": round(float(kept_w.min()), 4) if len(kept_w) else None,
            "weights_at_cap": int((1.0 / binary_entropy_of_gap(chosen_r - rejected_r)[keep] >= config.weight_cap).sum())
            if config.weight_cap else 0,
            "gap_mean": round(float(gaps.mean()), 4),
            "gap_histogram": _gap_histogram(gaps, staging / "gap_histogram.png"),
        }
        counts["partial_pairs_kept"] = len(data)
        counts["partial_pairs_dropped_by_reference"] = int((~keep).sum())
    else:
        counts["partial_pairs_kept"] = len(data)
    stats["seconds"] = round(time.time() - started, 2)
    if len(data) == 0:
        raise ValueError("no partial pair survived; nothing to write (see the counts: " + json.dumps(counts) + ")")

    final = staging / "dataset"
    shutil.rmtree(final, ignore_errors=True)
    data.save_to_disk(str(final))
    card = {
        "fingerprint": fp,
        "version": __version__,
        "config": asdict(config),
        "loader": report.to_dict(),
        "counts": {k: int(v) for k, v in sorted(counts.items())},
        "stats": stats,
    }
    (final / "card.json").write_text(json.dumps(card, indent=2))
    (final / "README.md").write_text(_card_readme(card))
    if (staging / "gap_histogram.png").exists():
        shutil.copy(staging / "gap_histogram.png", final / "gap_histogram.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        trash = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, trash)
        os.replace(final, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(final, out)
    shutil.rmtree(staging, ignore_errors=True)
    summary = {**card["counts"], **{k: v for k, v in stats.items() if k != "gap_histogram"}}
    print("[prepare] wrote", out, json.dumps(summary))
    print(f"[prepare] loader: {report.summary()}")
    print(f"[prepare] pairs skipped at tokenization: {format_skips(tokenization_skips(card['counts']))}")
    return out


def main(argv: list[str] | None = None) -> None:
    from sp_prm.config import load_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    prepare(load_config(PrepareConfig, argv))


if __name__ == "__main__":
    main()
