"""The generate stage's resampling of invalid workflows ("drop" mode, PAPERS.md §S3): every question of
a chunk resamples in the same call, each with its own count and seed, until valid or out of rounds."""

from dataclasses import replace

from scoreflow.optimize import stages
from scoreflow.optimize.config import RunConfig
from scoreflow.tasks import load_task
from scripted_workflows import GOOD, INVALID


class ScriptedGenerator:
    """Sample j of a call (per prompt) is valid iff (round + j) is even; records every call."""

    def __init__(self):
        self.calls = []

    def prompt_ids(self, family, question):
        return [len(question)]

    def questions_per_call(self, k):
        return 8

    def release(self):
        pass

    def sample(self, prompts, n, seeds):
        counts = n if isinstance(n, list) else [n] * len(prompts)
        self.calls.append((len(prompts), counts))
        round_ = len(self.calls) - 1
        return [[GOOD if (round_ + j) % 2 == 0 else INVALID for j in range(k)] for k in counts]


def test_invalid_workflows_resample_together_per_chunk(tmp_path):
    task = load_task("gsm8k", "validate")
    task = replace(task, questions=task.questions[:3])
    cfg = RunConfig(k=4, invalid="drop", max_resample=3)
    generator = ScriptedGenerator()
    records = stages.generate(stages.Iteration(0, tmp_path, cfg, task), generator)
    # round 0: samples 0, 2 valid; round 1 redoes 1, 3 (only 3 comes back valid); round 2 redoes 1
    assert generator.calls == [(3, [4, 4, 4]), (3, [2, 2, 2]), (3, [1, 1, 1])]
    assert [r["valid"] for r in records] == [True] * 12
    assert [r["resamples"] for r in records[:4]] == [0, 2, 0, 1]
    assert stages.generate(stages.Iteration(0, tmp_path, cfg, task), generator) == records  # resumed
    assert len(generator.calls) == 3


def test_run_settings_resume_across_versions_and_refuse_changes(tmp_path):
    import json

    import pytest

    from scoreflow.optimize.config import stored_form
    from scoreflow.rundir import save_or_check_settings

    cfg = RunConfig(k=4, api_key="sk-secret")
    save_or_check_settings(tmp_path, *stored_form(cfg))
    stored = json.loads((tmp_path / "config.json").read_text())
    assert "api_key" not in stored and "sk-secret" not in (tmp_path / "config.json").read_text()
    del stored["pair_gap"]  # a run directory written before pair_gap existed, with a key in it
    (tmp_path / "config.json").write_text(json.dumps({**stored, "api_key": None}))
    save_or_check_settings(tmp_path, *stored_form(cfg))  # resumes: the missing field takes its default
    with pytest.raises(ValueError, match=r"other settings \(k: stored 4, given 8\)"):
        save_or_check_settings(tmp_path, *stored_form(RunConfig(k=8)))
