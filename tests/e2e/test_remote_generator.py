"""The remote generator (--generator-url) keeps a whole stage in flight: one /v1/completions
request per question, up to --generator-concurrency at once, answers in question order with
each question's own seed, transient failures retried without disturbing the others. Against a
real loopback server whose every reply takes 0.5 s."""

import time
from dataclasses import replace

import pytest

from scoreflow.optimize import stages
from scoreflow.optimize.config import RunConfig
from scoreflow.optimize.generator import RemoteGenerator
from scoreflow.tasks import load_task
from scoreflow.testing.scripted_server import COMPLETIONS_PATH, FakeOpenAIServer, Reply

DELAY_S = 0.5
QUESTIONS = 32


@pytest.fixture
def questions():
    task = load_task("gsm8k", "validate")
    return replace(task, questions=task.questions[:QUESTIONS])


def generate(server, task, tmp_path, **settings):
    cfg = RunConfig(generator_url=server.base_url, generator_model="fake", k=2, invalid="zero", **settings)
    it = stages.Iteration(0, tmp_path, cfg, task)
    start = time.monotonic()
    records = stages.generate(it, RemoteGenerator(cfg, None))
    return records, time.monotonic() - start, it


def test_a_stage_of_32_questions_is_in_flight_at_once_in_question_order(tmp_path, questions):
    with FakeOpenAIServer(delay_s=DELAY_S) as server:
        records, elapsed, it = generate(server, questions, tmp_path)
    assert elapsed < 3.0, f"{QUESTIONS} questions at {DELAY_S} s each took {elapsed:.1f} s (sequential: 16 s)"
    assert server.max_in_flight == QUESTIONS and server.request_count == QUESTIONS
    by_question = {q.id: (i, q) for i, q in enumerate(questions.questions)}
    assert [r["question_id"] for r in records[::2]] == [q.id for q in questions.questions]
    for r in records:  # the echo server answers each prompt with itself: the answer is its question's
        assert by_question[r["question_id"]][1].prompt in r["response"]
    seeds = {it.seed(i, 0) for i, _ in by_question.values()}
    assert {req.body["seed"] for req in server.requests} == seeds and len(seeds) == QUESTIONS
    assert all(req.body["n"] == 2 and req.path == COMPLETIONS_PATH for req in server.requests)


def test_the_concurrency_bound_holds(tmp_path, questions):
    with FakeOpenAIServer(delay_s=DELAY_S) as server:
        records, elapsed, _ = generate(server, questions, tmp_path, generator_concurrency=8)
    assert server.max_in_flight == 8 and len(records) == 2 * QUESTIONS
    assert elapsed >= QUESTIONS / 8 * DELAY_S


def test_a_429_storm_is_retried_and_loses_no_question(tmp_path, questions):
    storm = [Reply(status=429, headers={"Retry-After": "0"}, delay_s=0.01)] * 48
    with FakeOpenAIServer(delay_s=DELAY_S) as server:
        server.script(*storm)
        records, _, _ = generate(server, questions, tmp_path)
    assert server.request_count == QUESTIONS + len(storm)
    assert {r["question_id"] for r in records} == {q.id for q in questions.questions}
    assert all(r["response"].startswith("echo: ") for r in records)


def test_a_request_that_keeps_failing_names_the_route(tmp_path, questions):
    from scoreflow.executor.client import BadRequestError

    with FakeOpenAIServer() as server:
        server.script(Reply(status=400))
        with pytest.raises(BadRequestError, match=r"HTTP 400 from .*/v1/completions"):
            generate(server, replace(questions, questions=questions.questions[:1]), tmp_path)
