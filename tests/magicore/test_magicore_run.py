"""A MAgICoRE run over a dataset: the resumable runner, the baselines (per round, and the
budget-matched ones on samples of their own), the tables, and `python -m scoreflow.magicore`
drawing the paper's two figures; against the scripted endpoint of scripted_magicore.py."""

import asyncio
import json
import sys

import pytest

from scoreflow.executor import ExecutorClient
from scoreflow.magicore import FORMATS, Agents, MagicoreConfig, MagicoreRunConfig, RewardModels, Runner, Sampling
from scoreflow.magicore import __main__ as cli
from scoreflow.magicore.sweep import parse_ks
from scoreflow.tasks.base import AnswerTask, Question
from scoreflow.tasks.gsm8k import check_number
from scripted_magicore import ScriptedServer, TableRM

PNG = b"\x89PNG\r\n\x1a\n"
QUESTIONS = [Question("hard", "a hard question", "7", {}), Question("easy", "an easy question", "5", {})]


@pytest.fixture
def server():
    with ScriptedServer() as s:
        yield s


def run(server, out, config):
    async def main():
        async with ExecutorClient(server.base_url, "fake", api_key="k") as executor:
            agents = Agents(executor, FORMATS["gsm8k"], config.sampling)
            task = AnswerTask("magicore-gsm8k", "math", QUESTIONS, check_number)
            runner = Runner(task, QUESTIONS, agents, RewardModels(TableRM(), TableRM()), config, out,
                            concurrency=2, log=lambda line: None)
            return await runner.run()
    return asyncio.run(main())


def test_run_writes_resumable_results_with_baselines_on_the_same_chains(server, tmp_path):
    config = MagicoreRunConfig("gsm8k", 2, MagicoreConfig(k=4, iterations=1), Sampling(seed=0))
    summary = run(server, tmp_path, config)
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "results.jsonl").read_text().splitlines())}
    hard, easy = rows["hard"], rows["easy"]
    assert hard["magicore"]["answers"] == ["4", "7"] and hard["magicore"]["correct"] == [0.0, 1.0]
    assert hard["magicore"]["hard"] == [True, False] and hard["magicore"]["calls"] == [4, 12]
    assert hard["magicore"]["difficulty"][0]["rule"] == "paper"
    assert easy["magicore"]["answers"] == ["5", "5"] and easy["magicore"]["hard"] == [False, False]
    assert easy["magicore"]["calls"] == [4, 4]  # stopped at iteration 0: carried forward
    b = hard["baselines"]
    assert {n: r["answer"] for n, r in b.items()} == {
        "best_of_k": "4", "self_consistency": "1", "weighted_sc": "4", "self_refine": "7", "self_refine_sc": "7"}
    assert [b[n]["calls"] for n in ("best_of_k", "self_refine", "self_refine_sc")] == [4, 3, 12]  # 1 + 2, 4 + 4*2
    # the Self-Refine baselines after every round up to T = 1 (round 0: chain 0, self-consistency)
    assert [(r["answer"], r["calls"], r["tokens"]) for r in b["self_refine"]["rounds"]] == [("1", 1, 15), ("7", 3, 45)]
    assert [(r["answer"], r["calls"]) for r in b["self_refine_sc"]["rounds"]] == [("1", 4), ("7", 12)]
    methods = {m["method"]: m for m in summary["methods"]}
    assert methods["MAgICoRE (T=1)"]["accuracy"] == 1.0 and methods["MAgICoRE (T=1)"]["calls"] == 8.0
    assert methods["Self-consistency (k-way)"]["accuracy"] == 0.5
    assert [i["accuracy"] for i in summary["iterations"]] == [0.5, 1.0]
    assert [i["hard"] for i in summary["iterations"]] == [0.5, 0.0]
    sr_sc = summary["rounds"]["Self-Refine + SC"]
    assert [(i["accuracy"], i["calls"]) for i in sr_sc] == [(0.5, 4.0), (1.0, 12.0)]
    markdown = (tmp_path / "results.md").read_text()
    assert "| MAgICoRE (T=1) | 1.000 | 8.0 |" in markdown and "difficulty rule paper" in markdown
    assert "| MAgICoRE | 1 | 1.000 | 0.00 | 8.0 | 120 |" in markdown  # round 1: the hard question refined
    assert "| Self-Refine + SC | 1 | 1.000 | - | 12.0 | 180 |" in markdown

    sent = server.request_count
    assert run(server, tmp_path, config) == summary and server.request_count == sent  # resumed: nothing redone
    with pytest.raises(ValueError, match=r"other settings \(magicore\.difficulty_rule: stored 'paper', given "
                                         r"'reference'; magicore\.iterations: stored 1, given 2\)"):
        changed = MagicoreConfig(k=4, iterations=2, difficulty_rule="reference")
        run(server, tmp_path, MagicoreRunConfig("gsm8k", 2, changed, Sampling(seed=0)))


def test_a_run_from_before_the_difficulty_rule_is_refused_not_resumed(server, tmp_path):
    config = MagicoreRunConfig("gsm8k", 2, MagicoreConfig(k=4, iterations=1), Sampling(seed=0))
    run(server, tmp_path, config)
    stored = json.loads((tmp_path / "config.json").read_text())
    del stored["magicore"]["difficulty_rule"]
    (tmp_path / "config.json").write_text(json.dumps(stored))
    with pytest.raises(ValueError, match=r"magicore\.difficulty_rule: stored None, given 'paper'"):
        run(server, tmp_path, config)


def test_budget_matched_baselines_draw_samples_of_their_own(server, tmp_path):
    config = MagicoreRunConfig("gsm8k", 2, MagicoreConfig(k=4, iterations=1), Sampling(seed=0),
                               baselines=("best_of_k", "best_of_n", "self_consistency_n"), baseline_k=3)
    summary = run(server, tmp_path, config)
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "results.jsonl").read_text().splitlines())}
    b = rows["hard"]["baselines"]
    # 3 samples of their own (seeds 1000000..1000002: HARD[0..2], ORM 0.2 each): the first wins; MAgICoRE's
    # 4 chains include HARD[3] (ORM 0.3), which Best-of-k picks
    assert (b["best_of_n"]["answer"], b["self_consistency_n"]["answer"], b["best_of_k"]["answer"]) == ("1", "1", "4")
    assert b["best_of_n"]["calls"] == b["self_consistency_n"]["calls"] == 3
    seeds = sorted(body["seed"] for body in server.bodies("solver"))
    assert seeds == sorted([0, 1, 2, 3] * 2 + [1_000_000, 1_000_001, 1_000_002] * 2)  # 2 questions
    assert [m["method"] for m in summary["methods"]][2:] == ["Best-of-3 (ORM, own samples)",
                                                             "Self-consistency (3-way, own samples)"]
    with pytest.raises(ValueError, match="best_of_n need"):
        MagicoreRunConfig("gsm8k", 2, MagicoreConfig(), Sampling(), baselines=("best_of_n",))


def test_baselines_and_ks_on_the_command_line():
    assert cli.parse_baselines("all") == ("best_of_k", "self_consistency", "weighted_sc", "self_refine",
                                          "self_refine_sc")
    assert cli.parse_baselines("all", 120)[-2:] == ("best_of_n", "self_consistency_n")
    assert parse_ks("16, 4,8,4") == (4, 8, 16)
    for bad in ("", "4,x", "0,4"):
        with pytest.raises(ValueError, match="--k-sweep takes"):
            parse_ks(bad)
    settings, _ = cli.parse_args(["--difficulty-rule", "reference", "--ablation", "joint-role", "--baseline-k", "12"])
    assert (settings.difficulty_rule, settings.ablation, settings.baseline_k) == ("reference", "joint-role", 12)
    with pytest.raises(ValueError, match="judges with one RM"):
        MagicoreConfig(ablation="orm-only", difficulty_rule="reference")


def command_line_run(server, out):
    settings = cli.MagicoreSettings(limit=2, k=4, iterations=1, executor_url=server.base_url, executor_model="fake",
                                    api_key="k", orm="judge", prm="judge", seed=0, k_sweep="2,4")
    return cli.main(settings, out)


def test_the_command_draws_accuracy_per_round_and_against_k(server, tmp_path, capsys):
    summary = command_line_run(server, tmp_path)
    assert set(summary["rounds"]) == {"MAgICoRE", "Self-Refine (chain 0)", "Self-Refine + SC"}
    assert (tmp_path / "iterations.png").read_bytes()[:8] == PNG
    assert (tmp_path / "k_sweep.png").read_bytes()[:8] == PNG
    table = (tmp_path / "k_sweep.md").read_text()
    assert table.startswith("| k | MAgICoRE | Self-consistency (k-way) | Best-of-k (ORM) |") and "\n| 2 | " in table
    assert "figures: " + str(tmp_path / "iterations.png") in capsys.readouterr().err
    # the sweep reused the main run's Solver chains: 4 per question, none drawn again
    assert len(server.prompts("solver")) == 2 * 4
    sweep = [json.loads(line) for line in (tmp_path / "k_sweep" / "k-2" / "initial.jsonl").read_text().splitlines()]
    assert [len(row["chains"]) for row in sweep] == [2, 2]


def test_without_matplotlib_the_command_writes_the_tables_and_says_how_to_get_the_figures(
        server, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails
    assert command_line_run(server, tmp_path) is not None
    assert (tmp_path / "results.md").exists() and (tmp_path / "k_sweep.md").exists()
    assert not (tmp_path / "iterations.png").exists() and not (tmp_path / "k_sweep.png").exists()
    (hint,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("figures")]
    assert hint == 'figures: skipped, matplotlib is not installed (pip install -e ".[plot]" to get them)'
