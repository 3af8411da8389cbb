"""The settings of `python -m scoreflow.train`: paper defaults, the embedded preset, and a
--help that shows both."""

from scoreflow.llama.registry import DEFAULT_MODEL, QWEN_CODER
from scoreflow.optimize.config import EMBEDDED, RunConfig, resolve
from scoreflow.train import parse_args


def test_pairs_default_per_task_as_in_the_reference():
    assert RunConfig(task="humaneval").pairs == 600 and RunConfig(task="math").pairs == 2000
    assert resolve({"task": "humaneval", "generator": "/models/llama"}).pairs == 600
    assert resolve({"task": "humaneval", "generator": "/models/llama", "pairs": 7}).pairs == 7
    assert resolve({}).pairs == EMBEDDED.settings["pairs"]  # the embedded preset's own N


def test_flags_resolve_to_paper_settings_or_the_preset():
    overrides, dpo, out = parse_args(["--generator", "/m", "--task", "math", "--lr", "1e-5", "--gradient-checkpointing",
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
