"""The user-error surface: one short message and exit code 2 from `sp-prm`, a traceback only for bugs
or with --debug; named input errors (file:line: reason) for bad jsonl lines and missing paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_prep.loaders import load_preferences
from sp_prm.cli import main
from sp_prm.errors import ConfigError, InputError, MissingPathError, UserError


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    return exit_info.value.code, capsys.readouterr().err


def assert_short(err: str) -> None:
    assert "Traceback" not in err
    message = err[err.index("sp-prm "):]  # after any progress bar of the data loading
    assert 1 <= len(message.strip().splitlines()) <= 3, err


def pairs_file(path: Path, n: int = 12) -> list[str]:
    lines = [json.dumps({"prompt": f"question {i}", "chosen": f"good answer {i}", "rejected": "bad"}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return lines


def test_config_errors_are_short_with_exit_code_2(capsys):
    code, err = run_cli(capsys, "decode", "--search.best_of_n.n", "0")
    assert code == 2 and "search.best_of_n.n must be >= 1, got 0" in err
    assert_short(err)
    code, err = run_cli(capsys, "decode", "--search.n", "4")  # a retired key names its new place
    assert code == 2 and "has moved: use search.best_of_n.n" in err
    assert_short(err)
    code, err = run_cli(capsys, "decode", "--search.method", "beam")
    assert code == 2 and "search.method must be one of" in err
    assert_short(err)
    code, err = run_cli(capsys, "prepare", "--sst_kk", "3")
    assert code == 2 and "unknown config key 'sst_kk'" in err and "sst_k" in err
    assert_short(err)


def test_debug_shows_the_traceback_of_a_user_error(capsys):
    code, err = run_cli(capsys, "--debug", "decode", "--search.best_of_n.n", "0")
    assert code == 2 and "Traceback" in err and "search.best_of_n.n must be >= 1" in err


def test_a_bug_keeps_its_traceback(monkeypatch):
    import data_prep.prepare as prepare_module

    def broken(argv):
        raise RuntimeError("a bug")

    monkeypatch.setattr(prepare_module, "main", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["prepare"])


def test_recipe_yaml_error_names_file_line_column(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("source: builtin:hh-rlhf-sample\nlimit: [1, 2\nsst_k: 3\n")
    code, err = run_cli(capsys, "prepare", "--config", str(recipe))
    assert code == 2 and f"{recipe}:3:" in err and "invalid YAML" in err
    assert_short(err)
    code, err = run_cli(capsys, "prepare", "--config", str(tmp_path / "missing.yaml"))
    assert code == 2 and "config file not found" in err and "missing.yaml" in err


def test_config_value_errors_name_the_recipe(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("truncation: middle\n")
    code, err = run_cli(capsys, "prepare", "--config", str(recipe))
    assert code == 2 and "truncation must be 'sst' or 'tlt'" in err and str(recipe) in err


def test_missing_column_is_a_short_error(tmp_path, capsys):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question": "q", "chosen": "a", "rejected": "b"}) + "\n")
    code, err = run_cli(capsys, "prepare", "--source", str(path), "--format", "pairs",
                        "--output_dir", str(tmp_path / "out"))
    assert code == 2 and "column 'prompt' (for prompt) not found" in err and "--columns.prompt" in err
    assert_short(err)


def test_truncated_jsonl_line_is_named_one_based(tmp_path, capsys):
    path = tmp_path / "pairs.jsonl"
    lines = pairs_file(path)
    lines[10] = lines[10][:-8]  # the 11th line is cut short
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"pairs.jsonl:11: invalid JSON: .* at column \d+ \(the line ends early: truncated\?\)"):
        load_preferences(str(path))
    code, err = run_cli(capsys, "prepare", "--source", str(path), "--output_dir", str(tmp_path / "out"))
    assert code == 2 and f"{path}:11: invalid JSON" in err and "--on_bad_rows skip" in err
    assert_short(err)


def test_non_utf8_byte_is_named_with_line_and_column(tmp_path):
    path = tmp_path / "pairs.jsonl"
    pairs_file(path, 3)
    with open(path, "ab") as f:
        f.write(b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(InputError, match=r"pairs.jsonl:4: not UTF-8: byte 0xe9 at column 16"):
        load_preferences(str(path))


def test_on_bad_rows_skip_counts_them(tmp_path):
    path = tmp_path / "pairs.jsonl"
    lines = pairs_file(path)
    lines[3] = lines[3][:20]
    lines[7] = "[1, 2]"
    path.write_text("\n".join(lines) + "\n")
    pairs, report = load_preferences(str(path), on_bad_rows="skip")
    assert len(pairs) == 10 and report.skipped["bad_json_line"] == 2
    assert "question 3" not in {p["prompt"][0]["content"] for p in pairs}


def test_json_document_error_names_line_and_column(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text('[{"prompt": "q", "chosen": "a", "rejected": "b"},\n {"prompt": "q2", "chosen": }]')
    with pytest.raises(InputError, match=r"pairs.json:2:\d+: invalid JSON"):
        load_preferences(str(path))


@pytest.mark.parametrize("name", ["does/not/exist", "./nothing_here", "/tmp/sp-prm-no-such-dir/x.jsonl"])
def test_missing_local_path_says_so(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "does").mkdir()
    with pytest.raises(MissingPathError, match="no such file or folder"):
        load_preferences(name)
    code, err = run_cli(capsys, "prepare", "--source", name, "--output_dir", str(tmp_path / "out"))
    assert code == 2 and "no such file or folder" in err and "Repo id" not in err


def test_error_family_keeps_builtin_bases():
    assert issubclass(ConfigError, ValueError) and issubclass(MissingPathError, FileNotFoundError)
    assert issubclass(InputError, UserError) and str(ConfigError("what", hint="do this")) == "what\ndo this"


def test_train_on_a_missing_dataset_is_a_short_error(tiny_llama_rm_dir, tmp_path, capsys):
    code, err = run_cli(capsys, "train", "--model_name_or_path", str(tiny_llama_rm_dir), "--dataset",
                        str(tmp_path / "nothing"), "--use_cpu", "true", "--output_dir", str(tmp_path / "out"))
    assert code == 2 and "not a dataset written by `sp-prm prepare`" in err and "sp-prm prepare" in err
    assert_short(err)


def test_decode_on_a_missing_prompt_file_is_a_short_error(tmp_path, capsys):
    code, err = run_cli(capsys, "decode", "--data.path", str(tmp_path / "prompts.jsonl"), "--output",
                        str(tmp_path / "o.jsonl"))
    assert code == 2 and "does not exist" in err
    assert_short(err)


def test_prepare_dry_run_checks_everything_and_writes_nothing(tiny_llama_rm_dir, tiny_llama_lm_dir, tmp_path,
                                                             capsys):
    argv = ["prepare", "--source", "builtin:hh-rlhf-sample", "--limit", "4", "--model_name_or_path",
            str(tiny_llama_rm_dir), "--output_dir", str(tmp_path / "out"), "--dry_run"]
    main(argv + ["--reference_model", str(tiny_llama_rm_dir)])
    assert "[prepare] dry run" in capsys.readouterr().out and list(tmp_path.iterdir()) == []
    code, err = run_cli(capsys, *argv, "--reference_model", str(tiny_llama_lm_dir))  # found before any work
    assert code == 2 and "not a trained reward model" in err and list(tmp_path.iterdir()) == []


def test_train_dry_run_stops_before_training(tiny_llama_rm_dir, tmp_path, capsys):
    main(["train", "--model_name_or_path", str(tiny_llama_rm_dir), "--dataset", "builtin:hh-rlhf-sample",
          "--loss", "orm", "--limit", "8", "--use_cpu", "true", "--output_dir", str(tmp_path / "out"), "--dry_run"])
    assert "[train] dry run" in capsys.readouterr().out and not (tmp_path / "out").exists()


def test_python_m_train_has_the_same_short_errors(tmp_path):
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{repo}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-m", "sp_prm.train", "--dataset", str(tmp_path / "missing"),
                           "--use_cpu", "true", "--output_dir", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "not a dataset written by `sp-prm prepare`" in done.stderr


def test_experiment_commands_give_short_errors_too(tmp_path, capsys):
    """The experiments' entry points report a user error like `sp-prm` does: one line naming the command."""
    from experiments.gold import run as gold_run
    from experiments.rear_verifiable import main as rear_main

    with pytest.raises(SystemExit) as e:
        gold_run.main(["data", "--config", "recipes/experiments/gold_hh.yaml", "--work_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "python -m experiments.gold.run data: error:" in err
    assert "run the teacher stage first" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as e:
        gold_run.main(["contenders", "--config", "recipes/experiments/gold_hh.yaml", "--contenders", "[orm,nope]"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "contenders: unknown ['nope']" in err
    with pytest.raises(SystemExit) as e:
        rear_main(["--splits", "[train]", "--output_dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "python -m experiments.rear_verifiable: error: splits must be dev and/or test" in err
