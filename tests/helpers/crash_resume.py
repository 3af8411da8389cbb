"""train_dpo interrupted and rerun, for the resume tests of both groupings."""

import json
from pathlib import Path

import pytest

from scoreflow.dpo import trainer as trainer_mod
from scoreflow.dpo.trainer import train_dpo


class Crash(Exception):
    pass


def crash_then_resume(new_model, pairs, out: Path, cfg, crash_step: int, monkeypatch):
    """Train a fresh model into `out`, crash right after step `crash_step`'s metrics line, then
    train another fresh model into `out` again (it resumes from the last checkpoint); returns it."""

    def crash(step, *args):
        if step == crash_step:
            raise Crash

    monkeypatch.setattr(trainer_mod, "_report", crash)
    with pytest.raises(Crash):
        train_dpo(new_model(), pairs, out, cfg, progress=True)
    monkeypatch.undo()
    resumed = new_model()
    train_dpo(resumed, pairs, out, cfg, progress=False)
    return resumed


def metrics(out: Path) -> list[dict]:
    """metrics.jsonl of a run, without the wall-clock field."""
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (out / "metrics.jsonl").read_text().splitlines()]
