"""`bench/bench_learning.py --real` end to end on 2 questions: scoreflow.train and scoreflow.evaluate as
real subprocesses against a scripted loopback generator and executor, then the table read back from
their files. The scripted generator writes the workflow the executor answers right only when a
trained adapter is loaded, so every number of the table is known."""

import json
import os
import subprocess
import sys
from pathlib import Path

from scripted_workflows import BAD, GOOD, ScoreFlowScript
from scoreflow.tasks import load_task
from scoreflow.testing.scripted_server import Reply

ROOT = Path(__file__).parents[2]


class TrainedWritesGood(ScoreFlowScript):
    """Training samples (n > 1) as ScoreFlowScript; an evaluation sample (n = 1) is GOOD from the
    adapter the server was asked to load, BAD from the base model."""

    def _default_reply(self, path, body):
        if path.endswith("/load_lora_adapter"):  # vLLM serves it under /v1
            return Reply(body={"loaded": body["lora_name"]})
        if path == "/v1/completions" and body.get("n", 1) == 1:
            text = GOOD if body["model"].startswith("scoreflow-") else BAD
            return Reply(body={"id": "cmpl", "object": "text_completion", "created": 0, "model": body["model"],
                               "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
                               "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
        return super()._default_reply(path, body)


def bench(server, generator: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "bench/bench_learning.py", "--real", *extra, "--task", "gsm8k", "--executor", "scripted",
         "--train-limit", "2", "--k", "3", "--iterations", "2", "--test-limit", "2", "--runs", "2",
         "--baselines", "programmer", "--train-args", "--pairs 2 --invalid zero --runs 2 --lr 1e-4",
         "--out", str(out), "--", "--generator", str(generator), "--generator-url", server.base_url,
         "--generator-model", "scripted", "--executor-url", server.base_url],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)


def test_real_mode_end_to_end_then_resume(tmp_path, gsm8k_rows, shallow_generator):
    held_out = [q.row for q in load_task("gsm8k", "test").questions[:2]]
    with TrainedWritesGood(gsm8k_rows[:2] + held_out) as server:
        first = bench(server, shallow_generator, tmp_path)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        results = json.loads((tmp_path / "experiment" / "results.json").read_text())
        rows = {r["arm"]: r for r in results["rows"]}
        assert list(rows) == ["untrained", "trained (score_dpo)", "baseline programmer"]
        assert rows["untrained"]["solve"] == 0.0 and rows["trained (score_dpo)"]["solve"] == 1.0
        trained = rows["trained (score_dpo)"]
        assert (trained["diff"], trained["diff_ci"]) == (1.0, 0.0)  # every question +1: no spread
        assert trained["valid"] == 1.0 and trained["operator_use"] == 1.0 and trained["questions"] == 2
        assert trained["tokens_per_question"] > 0
        assert set(results["stages"]) == {"train score_dpo", "evaluate score_dpo"}
        assert results["training_runs_agree"] == 1.0  # the scripted executor answers the same every run
        assert (tmp_path / "experiment" / "train-score_dpo" / "iter_1" / "adapter").is_dir()
        assert "| trained (score_dpo) | 2 | 1.000 ± 0.000 | +1.000 ± 0.000 |" in first.stdout

        requests = server.request_count
        again = bench(server, shallow_generator, tmp_path)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert json.loads((tmp_path / "experiment" / "results.json").read_text())["rows"] == results["rows"]
        # resumed: nothing generated or executed again (the two preflight checks and two adapter loads remain)
        assert server.request_count - requests <= 6

        requests = server.request_count
        table = bench(server, shallow_generator, tmp_path, "--table-only")
        assert table.returncode == 0 and server.request_count == requests  # runs nothing
        assert "| trained (score_dpo) | 2 | 1.000 ± 0.000 | +1.000 ± 0.000 |" in table.stdout
        assert "unfinished" not in table.stdout

        intervals = subprocess.run([sys.executable, "bench/bench_learning.py", "--real", "--intervals",
                                    str(tmp_path / "experiment" / "eval-score_dpo")], cwd=ROOT,
                                   env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
        assert intervals.returncode == 0, intervals.stderr[-3000:]  # any evaluate folder: every method in it
        assert "| scoreflow (trained) | 2 | 1.000 ± 0.000 | +1.000 ± 0.000 |" in intervals.stdout
        assert "| baseline programmer | 2 |" in intervals.stdout
