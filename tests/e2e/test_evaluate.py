"""`scoreflow.evaluate` against a scripted loopback server that is both the generator
(/v1/completions, vLLM-style runtime adapter loading) and the executor (chat), so every
method's score is known; then a resume that sends nothing, and the LLM judge on its own."""

import asyncio
import json
from pathlib import Path

import pytest

from scoreflow.cli import UserError
from scoreflow.evaluate import EvalConfig, parse_args, run
from scoreflow.executor import ExecutorClient
from scoreflow.tasks import load_task
from scoreflow.tasks.answer_judge import AnswerJudge, JudgedTask, parse_verdict
from scoreflow.testing.scripted_server import FakeOpenAIServer, Reply, completion
from scripted_workflows import BAD, GOOD, gold_in

ADAPTER_PREFIX = "scoreflow-iter_0-"  # RemoteGenerator serves RUN/iter_0/adapter as this + its path's digest


class EvalScript(FakeOpenAIServer):
    """Generator: GOOD for the adapter's name, BAD for the base model. Executor: the gold answer
    when the instruction says GOOD or "step by step" (the CoT baselines), a wrong one otherwise."""

    def __init__(self, rows: list[dict] = (), **kw):
        super().__init__(**kw)
        self.rows = list(rows)

    def _default_reply(self, path, body):
        if path == "/v1/load_lora_adapter":
            return Reply(body={})
        if path == "/v1/completions":
            text = GOOD if body["model"].startswith(ADAPTER_PREFIX) else BAD
            return Reply(body={"id": "cmpl", "object": "text_completion", "created": 0, "model": body["model"],
                               "choices": [{"index": i, "text": text, "finish_reason": "stop"}
                                           for i in range(body.get("n", 1))],
                               "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
        text = json.dumps(body["messages"]).replace("\\n", "\n")
        gold = gold_in(self.rows, text)
        right = "GOOD" in text or "step by step" in text
        return Reply(body=completion(f"\\boxed{{{gold}}}" if right else "\\boxed{123456}"))


def config(server, tmp_path, **kw) -> EvalConfig:
    url = server.base_url if server else "http://127.0.0.1:9/v1"  # no server: a run refused before any request
    return EvalConfig(**{"task": "gsm8k", "split": "validate", "limit": 2,
                         "adapter": str(tmp_path / "run" / "iter_0" / "adapter"), "generator_url": url,
                         "generator_model": "scripted", "executor_url": url, "executor_model": "scripted",
                         "baselines": ("io", "cot"), "runs": 2, **kw})


def test_evaluate_scores_every_method_and_resumes(tmp_path, gsm8k_rows):
    out = tmp_path / "eval"
    with EvalScript(gsm8k_rows[:2]) as server:
        results = run(config(server, tmp_path), out)
        scores = {m["method"]: m["score"] for m in results["methods"]}
        assert scores == {"generator (untrained)": 0.0, "scoreflow (trained)": 1.0, "baseline io": 0.0,
                          "baseline cot": 1.0}
        rows = {m["method"]: m for m in results["methods"]}
        assert rows["scoreflow (trained)"]["valid_workflows"] == 2 and rows["baseline io"]["llm_calls"] == 1.0
        assert "| scoreflow (trained) | 1.000 | 0.000 | +1.000 | 2/2 | 0 |" in (out / "results.md").read_text()
        assert "gsm8k/validate: 2 of the split's 264 questions" in results["markdown"]
        assert rows["baseline io"]["usd"] is None  # "scripted" has no price: the column says "-"
        assert (out / "accuracy_cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # against tokens
        assert json.loads((out / "results.json").read_text())["methods"] == results["methods"]
        executions = [json.loads(line) for line in (out / "trained" / "executions.jsonl").read_text().splitlines()]
        assert sorted((e["question_id"], e["run"]) for e in executions) == sorted(
            (str(r["id"]), run) for r in gsm8k_rows[:2] for run in range(2))

        sent = server.request_count
        assert run(config(server, tmp_path), out)["methods"] == results["methods"]
        work = [r for r in server.requests[sent:] if r.path in ("/v1/completions", "/v1/chat/completions")
                and r.body.get("max_tokens") != 1]  # the pre-flight checks ask for 1 token
        assert not work  # resumed: nothing regenerated or re-executed
        with pytest.raises(ValueError, match=r"other settings \(runs: stored 2, given 3\)"):
            run(config(server, tmp_path, runs=3), out)

        sent = server.request_count  # prices are not settings: the finished run is priced again, nothing rerun
        priced = run(config(server, tmp_path, price_in=1.0, price_out=2.0), out)
        assert not [r for r in server.requests[sent:] if r.path in ("/v1/completions", "/v1/chat/completions")
                    and r.body.get("max_tokens") != 1]
        assert [m["score"] for m in priced["methods"]] == [m["score"] for m in results["methods"]]
        io = next(m for m in priced["methods"] if m["method"] == "baseline io")
        # every call the fake executor answers: 10 prompt + 5 completion tokens
        assert io["usd"] == pytest.approx(io["llm_calls"] * (10 * 1.0 + 5 * 2.0) / 1e6)
        assert f"| {io['usd']:.6f} |" in priced["markdown"]
    with pytest.raises(ValueError, match="--price-in and --price-out go together"):
        EvalConfig(price_in=1.0)


def test_more_adapters_are_more_rows_and_a_priced_table_gives_score_per_dollar(tmp_path, gsm8k_rows):
    cost = str(tmp_path / "cost" / "iter_0" / "adapter")  # e.g. a run trained with --cost-weight
    with EvalScript(gsm8k_rows[:2]) as server:
        results = run(config(server, tmp_path, baselines=(), adapters=(("cost", cost),), price_in=1.0,
                             price_out=2.0), tmp_path / "eval")
    rows = {m["method"]: m for m in results["methods"]}
    assert list(rows) == ["generator (untrained)", "scoreflow (trained)", "scoreflow (cost)"]
    assert rows["scoreflow (cost)"]["score"] == 1.0 and rows["generator (untrained)"]["score"] == 0.0
    trained = rows["scoreflow (trained)"]
    assert f"| {trained['usd']:.6f} | {trained['score'] / trained['usd']:.0f} |" in results["markdown"]
    assert "| generator (untrained) | 0.000 |" in results["markdown"]
    assert parse_args(["--adapters", f"cost={cost}"])[0].adapters == (("cost", cost),)
    with pytest.raises(FileNotFoundError, match=r"--adapters cost=.*: no adapter_config.json there"):
        run(config(None, tmp_path, generator_url=None, adapter=None, adapters=(("cost", str(tmp_path / "nowhere")),)),
            tmp_path / "refused")


def test_fixed_workflows_share_the_table_and_an_edited_file_is_a_new_run(tmp_path, gsm8k_rows):
    good, bad = tmp_path / "good.py", tmp_path / "bad.py"
    good.write_text(GOOD)
    bad.write_text(BAD)
    out, fixed = tmp_path / "eval", dict(adapter=None, baselines=(), workflows=(("aflow", str(good)), ("adas", str(bad))))
    with EvalScript(gsm8k_rows[:2]) as server:
        results = run(config(server, tmp_path, **fixed), out)
        rows = {m["method"]: m for m in results["methods"]}
        assert list(rows) == ["generator (untrained)", "workflow aflow", "workflow adas"]
        assert (rows["workflow aflow"]["score"], rows["workflow adas"]["score"]) == (1.0, 0.0)
        assert rows["workflow aflow"]["valid_workflows"] == 2 and rows["workflow aflow"]["llm_calls"] == 2.0
        assert "| workflow aflow | 1.000 | 0.000 | +1.000 | 2/2 | 0 |" in results["markdown"]
        good.write_text(GOOD.replace("check this answer", "verify this answer"))
        with pytest.raises(ValueError, match="workflow_sha256.aflow: stored"):
            run(config(server, tmp_path, **fixed), out)
    bad.write_text("import os\n")
    with pytest.raises(UserError, match=r"--workflows adas=.*bad.py: not a valid math workflow: "):
        run(config(None, tmp_path, **fixed), tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    assert parse_args(["--workflows", f"aflow={good},adas={bad}"])[0].workflows == (("aflow", str(good)),
                                                                                  ("adas", str(bad)))


def test_command_line_defaults_and_baseline_names():
    cfg, out, key, _ = parse_args(["--task", "math", "--baselines", "io,multipersona", "--executor-url",
                                "http://x/v1", "--generator", "/models/llama"])
    assert cfg.baselines == ("io", "multipersona") and cfg.split == "test" and cfg.runs == 3 and key is None
    assert cfg.judged and cfg.temperature == 0.2 and cfg.limit is None  # paper settings, judge for MATH
    assert cfg.judge_label == "on (verdict)" and parse_args(["--judge", "on", "--judge-mode", "rescue"])[0].judge_label \
        == "on (rescue)"
    assert str(out) == "runs/evaluate-math-test"
    embedded, _, _, _ = parse_args([])
    assert not embedded.judged and embedded.limit == 10  # the embedded models: no judge, a small run
    with pytest.raises(ValueError, match="unknown baseline"):
        EvalConfig(baselines=("debate",))
    with pytest.raises(FileNotFoundError, match="no adapter_config.json there"):
        run(EvalConfig(adapter="/nonexistent/adapter"), Path("/nonexistent/out"))


class JudgeScript(FakeOpenAIServer):
    """Yes when the candidate says "one half", gibberish for "banana", else No."""

    def _default_reply(self, path, body):
        prompt = body["messages"][-1]["content"]
        candidate = prompt.split("Candidate answer:")[1]
        return Reply(body=completion("Yes." if "one half" in candidate else "Hmm" if "banana" in candidate else "No"))


def judged_scores(server, task, answers: list[str], mode: str) -> tuple[list[float], AnswerJudge]:
    async def main():
        async with ExecutorClient(server.base_url, "judge") as client:
            judge = AnswerJudge(client)
            judged = JudgedTask(task, judge, mode)
            return [await judged.ascore(question, a) for question, a in answers], judge

    return asyncio.run(main())


def test_the_judges_verdict_is_the_score_and_rescue_mode_only_lifts():
    """The paper's judge decides: a No zeroes even a rule-perfect MATH answer and DROP's partial
    F1. `rescue` keeps the rule score and asks only when it is below 1."""
    assert (parse_verdict("Yes."), parse_verdict(" no, because"), parse_verdict("Maybe")) == (True, False, None)
    math, drop = load_task("math", "validate"), load_task("drop", "validate")
    q, d = math.questions[0], drop.questions[0]
    partial = f"{d.gold.split('|')[0]} plus other words"
    assert 0 < drop.score(d, partial) < 1
    answers = [(q, f"\\boxed{{{q.gold}}}"), (q, "one half"), (q, "\\boxed{-99999}"), (q, "banana"), (q, "")]
    with JudgeScript() as server:
        verdict, judge = judged_scores(server, math, answers, "verdict")
        assert verdict == [0.0, 1.0, 0.0, 0.0, 0.0]
        assert judge.calls == 4 and judge.unreadable == 1  # every non-empty answer is judged
        rescue, judge = judged_scores(server, math, answers, "rescue")
        assert rescue == [1.0, 1.0, 0.0, 0.0, 0.0]
        assert judge.calls == 3  # the rule-perfect and the empty answer cost no call
        assert judged_scores(server, drop, [(d, partial)], "verdict")[0] == [0.0]
        assert judged_scores(server, drop, [(d, partial)], "rescue")[0] == [drop.score(d, partial)]
    assert (JudgedTask(math, None).name, JudgedTask(math, None).family) == ("math", "math")  # the task's own
    with pytest.raises(ValueError, match="judge mode must be one of verdict, rescue"):
        JudgedTask(math, None, "max")


def test_remote_generator_serves_each_new_adapter(tmp_path):
    from scoreflow.optimize.config import RunConfig
    from scoreflow.optimize.generator import RemoteGenerator

    with EvalScript() as server:
        base = RemoteGenerator(RunConfig(generator_url=server.base_url, generator_model="scripted"), None)
        assert base.served == "scripted" and base.sample([[1, 2]], 2, [0]) == [[BAD + "</graph>"] * 2]
        nxt = base.for_iteration(tmp_path / "run" / "iter_0" / "adapter")
        assert nxt.served.startswith(ADAPTER_PREFIX) and nxt.sample([[1, 2]], 1, [0]) == [[GOOD + "</graph>"]]
        (load,) = [r for r in server.requests if r.path == "/v1/load_lora_adapter"]
        assert load.body == {"lora_name": nxt.served, "lora_path": str(tmp_path / "run" / "iter_0" / "adapter")}
        other = base.for_iteration(tmp_path / "other" / "iter_0" / "adapter")
        assert other.served.startswith(ADAPTER_PREFIX) and other.served != nxt.served  # two runs, two names
