"""What train, evaluate and magicore refuse before they start, each in one line naming what to
fix, with exit status 2, no traceback, and nothing written to --out:
- a bad setting: each numeric field of every command's settings dataclass declares its range,
  and a value on the command line that is NaN, ±inf, below or above the range, or of the wrong
  type, a bad choice or a bad boolean stops the command;
- no work: a split without questions;
- an endpoint that accepts connections and does not answer a 1-token request in time;
- an --out that another run holds (its lock; a killed run's lock does not block the resume).

The commands run in this process with a trip-wire on their next step (loading the task,
taking the lock, or the run itself): a case that got past its check fails the test at once
instead of loading a model."""

from __future__ import annotations

import subprocess
import sys
import typing
from dataclasses import fields

import pytest

from scoreflow import evaluate, serve, train
from scoreflow.cli import Bounds, UserError, numeric_type, run_cli
from scoreflow.dpo.config import TrainConfig
from scoreflow.evaluate import EvalConfig
from scoreflow.magicore import __main__ as magicore
from scoreflow.optimize.config import RunConfig
from scoreflow.testing.scripted_server import FakeOpenAIServer, Reply

COMMANDS = {  # name -> (its module, how it runs argv, its settings dataclasses)
    "train": (train, train.main, (RunConfig, TrainConfig)),
    "evaluate": (evaluate, evaluate.main, (EvalConfig,)),
    "magicore": (magicore, lambda argv: magicore.main(*magicore.parse_args(argv)), (magicore.MagicoreSettings,)),
    "serve": (serve, lambda argv: serve.main(serve.parse_args(argv)), (serve.ServeSettings,)),
}
RUNS = ("train", "evaluate", "magicore")  # the commands with a run directory (--out)
FIRST_STEP = {"serve": "listen"}  # the step after the settings, where the trip-wire goes (default: load_task)
BORROWS = {EvalConfig: RunConfig}  # a field of the key without help or bounds of its own takes the value's


def metadata(cls: type, name: str) -> dict:
    """The field's flag metadata, borrowed where the field declares none (cli.add_flags' rule)."""
    own = {f.name: f.metadata for f in fields(cls)}[name]
    lender = {f.name: f.metadata for f in fields(BORROWS[cls])} if cls in BORROWS else {}
    return own if own.get("help") else lender.get(name, own)


def bad_values(kind: type, b: Bounds) -> list[str]:
    """NaN, the infinities, just outside each end, and the wrong type."""
    below = b.low if b.low_open else b.low - 1
    above = b.high if b.high_open else (b.high + 1 if kind is int else b.high * 2 + 1)
    wrong = ["abc", "1.5"] if kind is int else ["abc"]
    return ["nan", "inf", "-inf", str(below), str(above), *wrong]


def cases() -> list[tuple[str, str, list[str]]]:
    """(command, flag, bad values) for every flag of every command's settings dataclasses."""
    found = []
    for command, (_, _, classes) in COMMANDS.items():
        for cls in classes:
            hints = typing.get_type_hints(cls)
            for f in fields(cls):
                meta = metadata(cls, f.name)
                if not meta.get("help"):
                    continue  # not a flag: test_settings_without_a_flag_are_checked_too
                kind, name = numeric_type(hints[f.name]), "--" + f.name.replace("_", "-")
                if kind is not None and meta.get("bounds"):  # else test_every_numeric_setting_declares_its_range
                    found.append((command, name, bad_values(kind, meta["bounds"])))
                elif meta.get("choices"):
                    found.append((command, name, ["no-such-choice"]))
                elif hints[f.name] is bool:
                    found.append((command, name, ["maybe"]))
    return found


def test_every_numeric_setting_declares_its_range():
    undeclared = [f"{cls.__name__}.{f.name}" for _, _, classes in COMMANDS.values() for cls in classes
                  for f in fields(cls) if numeric_type(typing.get_type_hints(cls)[f.name])
                  and metadata(cls, f.name).get("bounds") is None]
    assert not undeclared


def refuse(*args, **kwargs):
    raise AssertionError("a bad setting got past the checks")


def run_command(command: str, argv: list[str], monkeypatch, capsys, tripwire: str | None = None
                ) -> tuple[int, list[str]]:
    """Exit status and stderr lines of `python -m scoreflow.COMMAND argv`, run in this process
    with `tripwire` (default: the command's FIRST_STEP), a name in its module, replaced by `refuse`."""
    module, main, _ = COMMANDS[command]
    tripwire = tripwire or FIRST_STEP.get(command, "load_task")
    monkeypatch.setattr(module, tripwire, refuse)
    with pytest.raises(SystemExit) as e:
        run_cli(f"scoreflow.{command}", lambda: main(argv))
    return e.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("command, flag, values", cases(), ids=lambda v: v if isinstance(v, str) else None)
def test_a_bad_value_is_one_line_exit_2_and_an_empty_out(tmp_path, monkeypatch, capsys, command, flag, values):
    out = tmp_path / "run"
    for value in values:
        where = ["--out", str(out)] if command in RUNS else []
        status, err = run_command(command, [f"{flag}={value}", *where], monkeypatch, capsys)
        assert status == 2 and len(err) == 1 and flag in err[0], (value, err)
        assert "Traceback" not in err[0] and not out.exists(), value


@pytest.mark.parametrize("cls", [TrainConfig, RunConfig, EvalConfig, magicore.MagicoreSettings, serve.ServeSettings])
def test_settings_without_a_flag_are_checked_too(cls):
    """Fields set by code or a stored config.json, not by a flag, have ranges as well."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        kind, bounds = numeric_type(hints[f.name]), metadata(cls, f.name).get("bounds")
        if kind is None:
            continue
        for value in (float("nan"), float("inf"), bounds.high * 2 + 1, True, "1"):
            with pytest.raises(UserError, match="--" + f.name.replace("_", "-")):
                cls(**{f.name: value})


EMPTY_SPLITS = {"train": ("aflow/gsm8k_validate.jsonl", "", "gsm8k/validate"),
                "evaluate": ("aflow/gsm8k_test.jsonl", "", "gsm8k/test"),
                "magicore": ("magicore/GSM8K.json", "[]", "gsm8k/test")}


@pytest.mark.parametrize("command", EMPTY_SPLITS)
def test_a_split_without_questions_is_refused(tmp_path, monkeypatch, capsys, command):
    file, empty, split = EMPTY_SPLITS[command]
    (tmp_path / "data" / file).parent.mkdir(parents=True)
    (tmp_path / "data" / file).write_text(empty)
    out = tmp_path / "run"
    status, err = run_command(command, ["--data-dir", str(tmp_path / "data"), "--out", str(out)], monkeypatch, capsys,
                              tripwire="run_lock")
    assert status == 2 and len(err) == 1 and f"{split} has no questions" in err[0], err
    assert not out.exists()


REMOTE = {"train": ["--generator-url", "{url}", "--generator-model", "g"],  # both models remote: nothing loads
          "evaluate": ["--generator-url", "{url}", "--generator-model", "g", "--judge", "off"],
          "magicore": ["--orm", "judge", "--prm", "judge"]}


def remote(command: str, url: str) -> list[str]:
    return ["--executor-url", url, "--executor-model", "m", *(a.format(url=url) for a in REMOTE[command])]


@pytest.mark.parametrize("command", RUNS)
@pytest.mark.parametrize("fault", [Reply(delay_s=5.0), Reply(drop=True)], ids=["silent", "hangs-up"])
def test_an_endpoint_that_does_not_answer_fails_the_preflight(tmp_path, monkeypatch, capsys, command, fault):
    out = tmp_path / "run"
    with FakeOpenAIServer() as server:
        server.script(fault)
        status, err = run_command(command, [*remote(command, server.base_url), "--preflight-timeout", "0.5", "--out",
                                            str(out)], monkeypatch, capsys, tripwire="run_lock")
    assert status == 2 and len(err) == 1, err
    assert f"--executor-url {server.base_url}" in err[0] and "did not answer a 1-token request" in err[0], err
    assert not out.exists()


LOCKED = """
import sys
from pathlib import Path
from scoreflow.rundir import run_lock
with run_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.read()
"""
AFTER_THE_LOCK = {"train": "_iterations", "evaluate": "_evaluate", "magicore": "_run"}


@pytest.mark.parametrize("command", RUNS)
def test_one_run_per_out_and_a_killed_runs_lock_does_not_block(tmp_path, monkeypatch, capsys, command):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", LOCKED, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with FakeOpenAIServer() as server:  # answers the pre-flight requests
            argv = [*remote(command, server.base_url), "--out", str(out)]
            status, err = run_command(command, argv, monkeypatch, capsys, tripwire=AFTER_THE_LOCK[command])
            assert status == 2 and len(err) == 1, err
            assert f"in use by another run (PID {holder.pid})" in err[0], err
            assert sorted(p.name for p in out.iterdir()) == [".lock"]  # the second run wrote nothing
            holder.kill()
            holder.wait()
            with pytest.raises(AssertionError, match="got past the checks"):  # the resume takes the lock
                COMMANDS[command][1](argv)
            assert server.requests and {r.body["max_tokens"] for r in server.requests} == {1}  # pre-flights only
    finally:
        holder.kill()
        holder.wait()


def test_the_sampling_flags_take_what_the_server_takes():
    """One rule for a request's temperature and top_p and for the commands' flags."""
    from scoreflow.engine import protocol, sampling_ranges

    for cls in (RunConfig, magicore.MagicoreSettings):
        assert metadata(cls, "temperature")["bounds"] is sampling_ranges.TEMPERATURE
        assert metadata(cls, "top_p")["bounds"] is sampling_ranges.TOP_P
    assert (protocol.TEMPERATURE, protocol.TOP_P) == (sampling_ranges.TEMPERATURE, sampling_ranges.TOP_P)


def test_a_baseline_the_task_cannot_run_is_refused(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    status, err = run_command("evaluate", ["--task", "mbpp", "--baselines", "io,programmer", "--out", str(out)],
                              monkeypatch, capsys, tripwire="run_lock")
    assert status == 2 and len(err) == 1 and "--baselines programmer: runs on math tasks only" in err[0], err
    assert not out.exists()
