"""Every skipped row is reported by reason: printed at the end of `prepare` and `train --loss orm`, and
written to the dataset card, the model card and sp_prm_run.json."""

from __future__ import annotations

import json

from data_prep.loaders import load_preferences
from data_prep.prepare import PrepareConfig, prepare
from sp_prm.formatting import PrefixFormat
from sp_prm.train import RUN_FILE, train
from sp_prm.train_config import SPPRMConfig

PREFIX = {"max_prompt_tokens": 48, "max_response_tokens": 24}


def dirty_source(path):
    rows = [{"prompt": f"question number {i}?", "chosen": f"a helpful answer {i}", "rejected": f"no {i}"}
            for i in range(8)]
    rows += [
        {"prompt": "q8", "chosen": 5, "rejected": "a string"},  # a number
        {"prompt": "q9", "chosen": "", "rejected": "a string"},  # empty
        {"prompt": "q10", "chosen": "only chosen"},  # the rejected key is missing
    ]
    lines = [json.dumps(r) for r in rows] + ['{"prompt": "q11", "chosen": "cut off']  # a truncated last line
    path.write_text("\n".join(lines) + "\n")
    return path


EXPECTED = {"non_string_response": 1, "empty_response": 1, "missing_key": 1, "bad_json_line": 1}


def test_missing_key_is_labelled_as_such(tmp_path):
    _, report = load_preferences(str(dirty_source(tmp_path / "d.jsonl")), on_bad_rows="skip")
    assert dict(report.skipped) == EXPECTED and report.rows_kept == 8


def test_prepare_prints_and_records_every_skip(tiny_llama_rm_dir, tmp_path, capsys):
    source = dirty_source(tmp_path / "d.jsonl")
    out = prepare(PrepareConfig(source=str(source), model_name_or_path=str(tiny_llama_rm_dir), on_bad_rows="skip",
                                prefix=PrefixFormat(**PREFIX), output_dir=str(tmp_path / "prep"), sst_k=2))
    printed = capsys.readouterr().out
    line = next(x for x in printed.splitlines() if x.startswith("[prepare] loader:"))
    for reason, n in EXPECTED.items():
        assert f"{reason} {n}" in line
    assert "[prepare] pairs skipped at tokenization:" in printed
    card = json.loads((out / "card.json").read_text())
    assert card["loader"]["skipped"] == EXPECTED
    readme = (out / "README.md").read_text()
    assert "missing_key 1" in readme and "bad_json_line 1" in readme


def test_train_orm_prints_and_records_every_skip(tiny_llama_rm_dir, tmp_path, capsys):
    source = dirty_source(tmp_path / "d.jsonl")
    config = SPPRMConfig(output_dir=str(tmp_path / "orm"), use_cpu=True, per_device_train_batch_size=4,
                         save_strategy="no", report_to="none", dataloader_num_workers=0, max_steps=1,
                         model_name_or_path=str(tiny_llama_rm_dir), dataset=str(source), loss="orm",
                         on_bad_rows="skip", prefix=PrefixFormat(**PREFIX))
    train(config)
    printed = capsys.readouterr().out
    line = next(x for x in printed.splitlines() if x.startswith("[train]"))
    for reason, n in EXPECTED.items():
        assert f"{reason} {n}" in line
    run = json.loads((tmp_path / "orm" / RUN_FILE).read_text())
    assert run["data"]["loader"]["skipped"] == EXPECTED and run["data"]["loader"]["rows_kept"] == 8
    card = (tmp_path / "orm" / "README.md").read_text()
    assert all(f"{reason} {n}" in card for reason, n in EXPECTED.items())
