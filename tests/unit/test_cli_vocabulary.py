"""The three commands speak one flag vocabulary, resolve presets one way, and still accept a
flag's earlier name for one release (hidden from --help, with a note)."""

from pathlib import Path

import pytest

from scoreflow import evaluate, train
from scoreflow.magicore import __main__ as magicore

SHARED = ("--task", "--limit", "--data-dir", "--executor-url", "--executor-model", "--api-key",
          "--executor-concurrency", "--temperature", "--top-p", "--max-new-tokens", "--seed", "--out")


def help_text(parse_args, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        parse_args(["--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_the_commands_share_one_vocabulary(capsys):
    for parse_args in (train.parse_args, evaluate.parse_args, magicore.parse_args):
        text = help_text(parse_args, capsys)
        assert [flag for flag in SHARED if f"{flag} " not in text] == []
    assert "--iterations ITERATIONS" in help_text(train.parse_args, capsys)
    assert "--iterations ITERATIONS" in help_text(magicore.parse_args, capsys)


def test_earlier_magicore_names_still_work_hidden_and_with_a_note(capsys):
    old = magicore.parse_args(["--dataset", "math", "--iters", "2", "--solver-url", "http://x/v1", "--solver-model",
                               "m", "--max-tokens", "64", "--concurrency", "3"])
    notes = capsys.readouterr().err
    new = magicore.parse_args(["--task", "math", "--iterations", "2", "--executor-url", "http://x/v1",
                               "--executor-model", "m", "--max-new-tokens", "64", "--question-concurrency", "3"])
    assert old == new == (magicore.MagicoreSettings(task="math", iterations=2, executor_url="http://x/v1",
                                                    executor_model="m", max_new_tokens=64, question_concurrency=3),
                          Path("runs/magicore-math"))
    assert "--iters is now --iterations" in notes and "--solver-url is now --executor-url" in notes
    assert capsys.readouterr().err == ""  # the new names print no note
    text = help_text(magicore.parse_args, capsys)
    assert not any(name in text for name in ("--dataset", "--iters ", "--solver-url", "--max-tokens", "--concurrency "))


def test_one_preset_mechanism_for_every_command():
    assert magicore.parse_args([])[0].k == magicore.EMBEDDED.settings["k"] == 8  # our own server
    assert magicore.parse_args(["--executor-url", "http://x/v1"])[0].k == 40  # the reference's k
    assert magicore.parse_args(["--k", "3"])[0].k == 3  # a flag wins over the preset
    assert evaluate.parse_args([])[0].limit == 10
    assert evaluate.parse_args(["--generator", "/models/llama"])[0].limit is None
    assert evaluate.parse_args(["--limit", "2"])[0].limit == 2
    overrides, dpo, _, _ = train.parse_args([])
    assert train.resolve(overrides, dpo).limit == 4 and train.resolve({"generator": "/m"}, {}).limit is None
    remote = ["--executor-url", "http://x/v1", "--executor-model", "m"]
    assert evaluate.parse_args(remote)[0].limit is None  # a real executor: the paper's settings
    for command, preset in ((evaluate, evaluate.EMBEDDED), (magicore, magicore.EMBEDDED)):
        assert preset.in_force(command.parse_args([])[0]) == "the embedded preset"
        assert preset.in_force(command.parse_args(remote)[0]) == "paper defaults"
