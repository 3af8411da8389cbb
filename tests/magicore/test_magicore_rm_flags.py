"""`python -m scoreflow.magicore`'s reward-model flags: with --executor-url a run names its ORM and
PRM or is refused in one line (exit 2) before any model loads or anything is written; "embedded"
picks the stand-in on purpose; without --executor-url the stand-in stays the default."""

import pytest

from scoreflow.cli import run_cli
from scoreflow.llama import DEFAULT_MODEL
from scoreflow.magicore import __main__ as magicore

REMOTE = ["--executor-url", "http://127.0.0.1:9/v1", "--executor-model", "m"]


def refuse(*args, **kwargs):
    raise AssertionError("the reward-model check must come before any model is resolved or loaded")


@pytest.mark.parametrize("given, missing", [([], "--orm and --prm"), (["--orm", "judge"], "--prm"),
                                            (["--prm", "/models/prm"], "--orm")])
def test_executor_url_without_reward_models_is_refused_in_one_line(tmp_path, capsys, monkeypatch, given, missing):
    for name in ("resolve_model_dir", "reward_models"):
        monkeypatch.setattr(magicore, name, refuse)
    out = tmp_path / "run"
    argv = ["--limit", "1", *REMOTE, *given, "--out", str(out)]
    with pytest.raises(SystemExit) as e:
        run_cli("scoreflow.magicore", lambda: magicore.main(*magicore.parse_args(argv)))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m scoreflow.magicore: error: --executor-url without " + missing + ":")
    for fix in ("--orm /path/to/orm --prm /path/to/prm", "--orm judge --prm judge", "--orm embedded --prm embedded"):
        assert fix in err[0]
    assert not out.exists()


def test_embedded_is_the_stand_in_by_name_and_the_default_on_our_own_server():
    settings, _ = magicore.parse_args([])
    assert (settings.orm, settings.prm) == (DEFAULT_MODEL, DEFAULT_MODEL)  # as before: no flag needed
    settings, _ = magicore.parse_args([*REMOTE, "--orm", "embedded", "--prm", "judge"])
    assert (settings.orm, settings.prm) == (DEFAULT_MODEL, "judge")  # recorded as the model it is
    assert magicore.parse_args(["--orm", "embedded"])[0] == magicore.parse_args([])[0]
    settings, _ = magicore.parse_args(REMOTE)
    assert (settings.orm, settings.prm) == (None, None)  # main refuses these
