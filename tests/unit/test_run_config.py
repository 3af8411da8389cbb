"""The settings of `python -m scoreflow.train`: paper defaults, the embedded preset, and a
--help that shows both."""

import json
import subprocess
import sys

import pytest

from scoreflow.llama.registry import DEFAULT_MODEL, QWEN_CODER
from scoreflow.optimize.config import EMBEDDED, RunConfig, resolve
from scoreflow.testing.scripted_server import FakeOpenAIServer
from scoreflow.train import parse_args


def test_pairs_default_per_task_as_in_the_reference():
    assert RunConfig(task="humaneval").pairs == 600 and RunConfig(task="math").pairs == 2000
    assert resolve({"task": "humaneval", "generator": "/models/llama"}).pairs == 600
    assert resolve({"task": "humaneval", "generator": "/models/llama", "pairs": 7}).pairs == 7
    assert resolve({}).pairs == EMBEDDED.settings["pairs"]  # the embedded preset's own N


def test_flags_resolve_to_paper_settings_or_the_preset():
    overrides, dpo, out, _ = parse_args(["--generator", "/m", "--task", "math", "--lr", "1e-5", "--gradient-checkpointing",
                                      "true", "--invalid", "zero"])
    cfg = resolve(overrides, dpo)
    assert (cfg.task, cfg.invalid, cfg.k, cfg.temperature, cfg.iterations) == ("math", "zero", 8, 0.2, 3)
    assert (cfg.dpo.lr, cfg.dpo.gradient_checkpointing, cfg.dpo.beta) == (1e-5, True, 0.1)
    assert str(out) == "runs/scoreflow-math"
    embedded = resolve(*parse_args([])[:2])
    assert (embedded.k, embedded.temperature, embedded.iterations, embedded.dpo.lr) == (8, 0.7, 2, 1e-4)
    assert (embedded.generator, embedded.dpo.dpo_grouping) == (QWEN_CODER, "question")
    assert embedded.dpo.gradient_checkpointing and not resolve({"generator": "/m"}).dpo.gradient_checkpointing


def test_every_embedded_generator_gets_the_preset_and_a_folder_does_not():
    for name in (QWEN_CODER, DEFAULT_MODEL, DEFAULT_MODEL.upper()):
        assert resolve({"generator": name}).k == EMBEDDED.settings["k"] and resolve({"generator": name}).limit == 4
    assert resolve({"generator": "/models/llama"}).limit is None
    assert resolve({"generator": QWEN_CODER, "generator_url": "http://x/v1"}).limit is None  # a remote generator
    assert resolve({"generator": QWEN_CODER, "executor_url": "http://x/v1"}).limit is None  # a remote executor


def test_help_shows_paper_default_and_preset_with_choices(capsys):
    try:
        parse_args(["--help"])
    except SystemExit as e:
        assert e.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: python -m scoreflow.train")
    assert "Generator sampling temperature. (default: 0.2; embedded preset: 0.7)" in text
    assert "(default: 3; embedded preset: 2)" in text  # --iterations
    assert "600 for HumanEval, 2000 for the others" in text and "(embedded preset: 32)" in text
    for choices in ("--invalid {drop,zero}", "--pair-gap {cubic,uniform}", "--loss {score_dpo,dpo}",
                    "--task {gsm8k,math,humaneval,mbpp,drop,hotpotqa,"):
        assert choices in text


def test_a_real_endpoint_gets_the_paper_defaults():
    """The embedded preset is for runs where both models are ours and local: with a real executor
    (or generator) endpoint, 4 questions, 1 run and lr 1e-4 would silently cut a paid run short."""
    remote = resolve({"executor_url": "http://127.0.0.1:1/v1", "executor_model": "gpt-4o-mini"})
    assert (remote.limit, remote.runs, remote.k, remote.temperature, remote.dpo.lr, remote.invalid) == \
        (None, 3, 8, 0.2, 1e-6, "drop")
    assert json.loads(remote.to_json())["preset"] == "paper defaults"
    local = resolve({})
    assert (local.limit, local.runs) == (4, 1) and json.loads(local.to_json())["preset"] == "the embedded preset"
    assert RunConfig.from_dict(json.loads(local.to_json())) == local  # "preset" is recorded, not a setting


def first_lines(argv: list[str], cwd) -> list[str]:
    """The stderr lines `python -m scoreflow.train ARGV` prints up to its start line; then it is killed."""
    proc = subprocess.Popen([sys.executable, "-m", "scoreflow.train", *argv], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line.strip())
            if " questions, " in line:  # "scoreflow.train: gsm8k/validate, N questions, ..."
                break
    finally:
        proc.kill()
        proc.wait()
    return lines


@pytest.mark.slow
def test_the_first_lines_name_the_defaults_in_force(tmp_path):
    with FakeOpenAIServer() as server:
        remote = first_lines(["--executor-url", server.base_url, "--executor-model", "m", "--out",
                              str(tmp_path / "remote")], tmp_path)
    assert "scoreflow.train: settings: paper defaults" in remote and "runs=3" in remote[-1], remote
    local = first_lines(["--out", str(tmp_path / "local")], tmp_path)
    assert "scoreflow.train: settings: the embedded preset" in local and "runs=1" in local[-1], local
    assert json.loads((tmp_path / "remote" / "config.json").read_text())["preset"] == "paper defaults"
