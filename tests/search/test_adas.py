"""ADAS's fitness (scoreflow/search/adas.py `bootstrap`) against a reference computed here, then a
whole Meta Agent Search in this process against a scripted meta agent and executor on
loopback (scripted_search.py): the archive grows from the static baselines, a generation's
checks and evaluations stop at --debug-max, and a generation that evaluated nothing adds
nothing and does not stop the search."""

import json

import numpy as np
import pytest

from scripted_search import OPTIMIZER, SearchScript, adas_reply
from scoreflow.search.adas import search
from scoreflow.search.adas import BOOTSTRAP_SAMPLES, CONFIDENCE, bootstrap, fitness_text
from scoreflow.search.command import run
from scoreflow.search.config import ADAS_EMBEDDED, AdasConfig
from scoreflow.workflow.static_baselines import baselines_for
from scripted_workflows import BAD, GOOD, INVALID


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile with linear interpolation between closest ranks (numpy's default)."""
    position = q / 100 * (len(sorted_values) - 1)
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


@pytest.mark.parametrize("scores", [[1, 0, 1, 1, 0, 0.5], [float(i % 3 == 0) for i in range(50)]])
def test_the_fitness_is_the_median_and_95_percent_interval_of_bootstrap_means(scores):
    samples, n = 3000, len(scores)
    rows = np.random.default_rng([7, 1]).integers(0, n, size=(samples, n))  # resample b: row b of one seeded draw
    means = sorted(sum(scores[j] for j in row) / n for row in rows.tolist())
    reference = {"median": percentile(means, 50), "low": percentile(means, 2.5), "high": percentile(means, 97.5)}
    assert bootstrap(scores, [7, 1], samples=samples) == pytest.approx(reference, abs=1e-12)
    assert bootstrap(scores, [7, 1], samples=samples) != bootstrap(scores, [7, 2], samples=samples)
    assert (BOOTSTRAP_SAMPLES, CONFIDENCE) == (100_000, 0.95)
    paper = bootstrap(scores, 0)  # ADAS's 100,000 resamples: the interval of the mean, ~ ±1.96 standard errors
    half = 1.96 * np.std(scores) / np.sqrt(n)
    assert paper["median"] == pytest.approx(np.mean(scores), abs=0.2 * half)
    assert paper["high"] - paper["low"] == pytest.approx(2 * half, rel=0.25)
    assert fitness_text({"median": 0.5, "low": 0.25, "high": 0.875}) == \
        "95% bootstrap confidence interval (25.0%, 87.5%), median 50.0%"


def test_the_archive_grows_and_debugging_is_bounded(tmp_path, gsm8k_rows):
    replies = [adas_reply(BAD, "first"), adas_reply(BAD, "first"), adas_reply(GOOD, "goody"),  # gen 1: joins
               adas_reply(BAD, "b"), adas_reply(BAD, "b"), adas_reply(BAD, "b"),  # gen 2: all runs 0, debugged
               adas_reply(INVALID, "b")]  # ... into an invalid one: the bound, the evaluated one joins
    out = tmp_path / "adas"
    with SearchScript(gsm8k_rows[:1], replies, then=lambda i: adas_reply(INVALID, "never valid")) as server:  # gen 3
        cfg = AdasConfig(limit=1, rounds=3, debug_max=2, optimizer_url=server.base_url, optimizer_model=OPTIMIZER,
                         executor_url=server.base_url, executor_model="executor")
        result = run("scoreflow.adas", cfg, out, ADAS_EMBEDDED, search)
        requests = server.optimizer_requests()
    initial = baselines_for("math")
    assert [m["name"] for m in result["archive"]] == [*initial, "goody", "b"]
    assert [m["generation"] for m in result["archive"]] == [0] * len(initial) + [1, 2]
    assert [(g["replies"], g["evaluations"]) for g in result["generations"]] == [(3, 1), (4, 1), (4, 0)]
    assert len(requests) == 11  # propose + 2 reflections per generation, and debug_max - 1 fixes at most
    assert "Evaluating that workflow failed:\nevery validation run scored 0" in requests[6][-1]["content"]
    assert "imports are not allowed" in requests[10][-1]["content"]  # gen 3: the check's problems fed back
    assert "median 100.0%" in requests[3][1]["content"]  # gen 2's meta agent sees gen 1's member and fitness
    assert requests[4][-1]["content"].startswith("The workflow tried before:\n### goody")  # reflection 1
    assert result["best"] == "goody" and (out / "best_workflow.py").read_text() == GOOD

    generations = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    member = generations[0]["member"]
    evaluated = json.loads((out / "gen_1" / "gen_1-try_1" / "fitness.jsonl").read_text())
    assert member["fitness"] == bootstrap(evaluated["scores"], [0, 1]) and evaluated["scores"] == [1.0]
    assert generations[2]["member"] is None and "imports are not allowed" in " ".join(generations[2]["problems"])
