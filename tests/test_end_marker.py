"""``prefix.end_marker`` modes (complete / never / always) in every stage: where the marker is, and that the
one-pass prefix scoring falls back to one sequence per prefix under ``always`` (checked against naive scoring)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from datasets import load_from_disk

from data_prep.loaders import load_preferences
from data_prep.prepare import PrepareConfig, prepare
from decoding.metrics.reward import reward_inputs
from decoding.scorers import RewardModelScorer
from decoding.types import Partial, Prompt
from sp_prm.collator import PairCollator
from sp_prm.evaluate import EvaluateConfig, evaluate
from sp_prm.formatting import PrefixFormat, encode, require_same_format
from sp_prm.models import load_reward_model, load_tokenizer, trained_prefix_format
from sp_prm.scoring import sequence_rewards
from sp_prm.train import train
from sp_prm.train_config import SPPRMConfig
from sp_prm.trainer import pair_rewards

MSGS = [{"role": "user", "content": "What is the capital of France?"}]
RESPONSE = "The capital of France is Paris."
LIMITS = {"max_prompt_tokens": 96, "max_response_tokens": 24}


def end_ids(tokenizer) -> list[int]:
    """The SmolLM2 chat template's end of an assistant turn: '<|im_end|>' then a newline."""
    return tokenizer("<|im_end|>\n", add_special_tokens=False)["input_ids"]


def naive_reward(model, ids) -> float:
    with torch.no_grad():
        return float(sequence_rewards(model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[0])


# -- the modes by hand ----------------------------------------------------------------------------------------
def test_modes_by_hand(smollm_tokenizer):
    tok = smollm_tokenizer
    end = end_ids(tok)
    assert end == [2, 198]
    enc = encode(tok, MSGS, RESPONSE, PrefixFormat())
    head, c = enc.prompt_ids, enc.content_ids
    assert enc.end_ids == end
    want = {  # (partial prefix of 2 tokens, whole response)
        "complete": (head + c[:2], head + c + end),
        "never": (head + c[:2], head + c),
        "always": (head + c[:2] + end, head + c + end),
    }
    for mode, (partial, whole) in want.items():
        fmt = PrefixFormat(end_marker=mode)
        side = encode(tok, MSGS, RESPONSE, fmt)
        assert side.sequence_for(fmt, 2) == side.sequence(2, mode) == partial, mode
        assert side.sequence_for(fmt) == side.sequence(None, mode) == whole, mode
        assert side.sequence_for(fmt, complete=False) == (whole if mode == "always" else head + c), mode
    assert tok.decode(want["always"][0]).endswith("<|im_start|>assistant\nThe capital<|im_end|>\n")
    # the older booleans are the named modes, in configs and in stored cards
    assert PrefixFormat(end_marker=True) == PrefixFormat() and PrefixFormat().end_marker == "complete"
    assert PrefixFormat(end_marker=False).end_marker == "never"
    assert PrefixFormat(**{**PrefixFormat().to_dict(), "end_marker": True}) == PrefixFormat()
    with pytest.raises(ValueError, match="end_marker must be one of"):
        PrefixFormat(end_marker="partial")
    # fingerprints hash the older booleans, so data prepared before the named modes is still recognised
    assert PrefixFormat().legacy_dict() == {**PrefixFormat().to_dict(), "end_marker": True}
    assert PrefixFormat(end_marker="always").legacy_dict()["end_marker"] == "always"
    assert PrefixFormat().prefixes_nest and not PrefixFormat(end_marker="always").prefixes_nest
    with pytest.raises(ValueError, match="always"):
        enc.reward_index(2, "always")
    # plain format: the marker is EOS
    plain = PrefixFormat(template="plain", end_marker="always")
    side = encode(tok, MSGS, RESPONSE, plain)
    assert side.sequence_for(plain, 3)[-1] == tok.eos_token_id


# -- prepare --------------------------------------------------------------------------------------------------
def test_prepare_always_marks_every_prefix_and_scores_each_alone(tmp_path, tiny_llama_rm_dir):
    fmt = PrefixFormat(end_marker="always", **LIMITS)
    cfg = PrepareConfig(source="builtin:hh-rlhf-sample", limit=4, model_name_or_path=str(tiny_llama_rm_dir),
                        reference_model=str(tiny_llama_rm_dir), weight_cap=None, truncation="tlt", prefix=fmt,
                        output_dir=str(tmp_path / "d"), chunk_size=4)
    data = load_from_disk(str(prepare(cfg)))
    card = json.loads((tmp_path / "d" / "card.json").read_text())
    assert card["config"]["prefix"]["end_marker"] == "always"
    assert card["stats"]["reference_scoring"] == "one pass per prefix"  # the fallback
    tok = load_tokenizer(str(tiny_llama_rm_dir))
    model = load_reward_model(str(tiny_llama_rm_dir), device="cpu")
    pairs = {p["id"]: p for p in load_preferences("builtin:hh-rlhf-sample", limit=4)[0]}
    assert len(data) > 4 and not all(data["chosen_complete"])  # partial prefixes are there
    for row in data:
        c = encode(tok, pairs[row["id"]]["prompt"], pairs[row["id"]]["chosen"], fmt)
        assert row["chosen_ids"] == c.prompt_ids + c.content_ids[:row["position"]] + end_ids(tok)
        assert row["ref_chosen_reward"] == pytest.approx(naive_reward(model, row["chosen_ids"]), abs=1e-4)
        assert row["ref_rejected_reward"] == pytest.approx(naive_reward(model, row["rejected_ids"]), abs=1e-4)


# -- train ----------------------------------------------------------------------------------------------------
def test_train_always_collates_one_sequence_per_prefix_and_records_the_mode(tmp_path, tiny_llama_rm_dir,
                                                                            smollm_tokenizer):
    fmt = PrefixFormat(end_marker="always", **LIMITS)
    out = tmp_path / "d"
    prepare(PrepareConfig(source="builtin:hh-rlhf-sample", limit=6, model_name_or_path=str(tiny_llama_rm_dir),
                          prefix=fmt, output_dir=str(out), sst_k=3))
    rows = [dict(r) for r in load_from_disk(str(out))]
    assert all(r["chosen_ids"][-2:] == end_ids(smollm_tokenizer) for r in rows)
    # the multi-prefix collator finds no nesting (each prefix ends in its marker) and so reads every side alone
    batch = PairCollator(smollm_tokenizer.pad_token_id, multi_prefix=True)(rows)
    sides = {tuple(r[k]) for r in rows for k in ("chosen_ids", "rejected_ids")}
    assert batch["input_ids"].shape[0] == len(sides)
    model = load_reward_model(str(tiny_llama_rm_dir), device="cpu")
    with torch.no_grad():
        chosen, rejected = pair_rewards(model, batch, causal=True)
    assert torch.allclose(chosen, torch.tensor([naive_reward(model, r["chosen_ids"]) for r in rows]), atol=1e-4)
    assert torch.allclose(rejected, torch.tensor([naive_reward(model, r["rejected_ids"]) for r in rows]), atol=1e-4)

    config = SPPRMConfig(model_name_or_path=str(tiny_llama_rm_dir), dataset=str(out), loss="unweighted",
                         output_dir=str(tmp_path / "m"), use_cpu=True, per_device_train_batch_size=4, max_steps=1,
                         save_strategy="no", report_to="none", dataloader_num_workers=0)
    train(config)
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["sp_prm"]["prefix"]["end_marker"] == "always"
    assert trained_prefix_format(load_reward_model(str(tmp_path / "m"), device="cpu")) == fmt
    assert '"end_marker": "always"' in (tmp_path / "m" / "README.md").read_text()
    # the dataset's ids fix the mode: training them as another mode is refused
    config.prefix = PrefixFormat(**LIMITS)
    config.output_dir = str(tmp_path / "m2")
    with pytest.raises(ValueError, match="differs from the one the dataset was built with"):
        train(config)


# -- evaluate-rm ----------------------------------------------------------------------------------------------
def test_evaluate_always_scores_each_cut_with_its_marker(tmp_path, tiny_llama_rm_dir):
    fmt = PrefixFormat(template="plain", end_marker="always", **LIMITS)
    cfg = EvaluateConfig(models=[str(tiny_llama_rm_dir)], names=["llama"], limit=30, token_counts=[3],
                         fractions=[1.0], prefix=fmt, output_dir=str(tmp_path / "e"))
    res = evaluate(cfg)["results"]["llama"]
    tok = load_tokenizer(str(tiny_llama_rm_dir))
    model = load_reward_model(str(tiny_llama_rm_dir), device="cpu")
    pairs, _ = load_preferences("builtin:hh-rlhf-sample", limit=30, subset="eval")
    wins = []
    for pair in pairs:  # naive: each prefix alone, EOS (the plain format's marker) after it
        seqs = [encode(tok, pair["prompt"], pair[k], fmt).sequence(3, "always") for k in ("chosen", "rejected")]
        assert all(s[-1] == tok.eos_token_id for s in seqs)
        r = [naive_reward(model, s) for s in seqs]
        wins.append(float(r[0] > r[1]))
    assert res["t=3"]["accuracy"] == pytest.approx(sum(wins) / len(wins))
    # a model trained under the default mode is not evaluated under another
    m = load_reward_model(str(tiny_llama_rm_dir), device="cpu")
    m.config.sp_prm = {"prefix": PrefixFormat(template="plain", **LIMITS).to_dict()}
    m.save_pretrained(tmp_path / "trained")
    tok.save_pretrained(tmp_path / "trained")
    cfg.models, cfg.names = [str(tmp_path / "trained")], None
    with pytest.raises(ValueError, match="was trained on prefixes rendered as"):
        evaluate(cfg)


# -- the rm: scorer (decoding) and the reward metric ----------------------------------------------------------
def test_rm_scorer_always_marks_partials_and_the_cache_matches_naive(tiny_llama_rm, smollm_tokenizer):
    tok = smollm_tokenizer
    fmt = PrefixFormat(end_marker="always")
    p = Prompt("q", MSGS, None, MSGS[0]["content"], None, 0)
    content = encode(tok, MSGS, RESPONSE, PrefixFormat()).content_ids
    cached = RewardModelScorer(tiny_llama_rm, tok, fmt)
    default = RewardModelScorer(tiny_llama_rm, tok, PrefixFormat())
    for t in (1, 2, 4, len(content)):  # a growing response, as a search scores it step by step
        part = Partial(tok.decode(content[:t]), content[:t], complete=t == len(content))
        ids = cached.sequence(p, part)
        assert ids[-2:] == end_ids(tok)  # partial or complete: the marker
        assert (default.sequence(p, part)[-2:] == end_ids(tok)) == part.complete  # the default: complete only
        siblings = [part, Partial(part.text + " yes", [], complete=False)]
        got = cached.score([p, p], siblings)
        naive = torch.tensor([naive_reward(tiny_llama_rm, cached.sequence(p, s)) for s in siblings])
        assert torch.allclose(got, naive, atol=1e-4), t
    # the reward metric: a cut response gets the marker under always, not under complete
    cut = reward_inputs(tok, [MSGS], [RESPONSE], fmt, complete=[False])[0]
    assert cut[-2:] == end_ids(tok)
    assert reward_inputs(tok, [MSGS], [RESPONSE], PrefixFormat(), complete=[False])[0][-2:] != end_ids(tok)
    # an explicit prefix setting that contradicts the PRM's recorded one is refused (decode's build_scorer)
    require_same_format(fmt, PrefixFormat(end_marker="always"), "prm")
    require_same_format(None, PrefixFormat(), "prm")
    with pytest.raises(ValueError, match=r"differs in \['end_marker'\]"):
        require_same_format(fmt, PrefixFormat(), "prm")


def test_decode_rm_scorer_takes_the_prm_mode(tmp_path, tiny_llama_rm, smollm_tokenizer):
    from decoding.decode import DecodeConfig, build_scorer
    from decoding.types import Meter
    from sp_prm.config import build

    fmt = PrefixFormat(end_marker="always")
    tiny_llama_rm.config.sp_prm = {"prefix": fmt.to_dict()}
    tiny_llama_rm.save_pretrained(tmp_path / "prm")
    smollm_tokenizer.save_pretrained(tmp_path / "prm")
    cfg = build(DecodeConfig, {"scorer": {"name": f"rm:{tmp_path / 'prm'}"}, "policy": {"device": "cpu"}})
    policy = SimpleNamespace(device=torch.device("cpu"))
    assert build_scorer(cfg, policy, Meter()).format == fmt
    cfg.scorer.prefix = PrefixFormat()
    with pytest.raises(ValueError, match="end_marker"):
        build_scorer(cfg, policy, Meter())
