"""Fixtures of the end-to-end tests."""

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file


@pytest.fixture(scope="module")
def shallow_generator(tmp_path_factory, default_model_dir) -> Path:
    """The default model cut to its first 6 of 30 layers, as an HF-format directory with its
    tokenizer: a Score-DPO step on it takes ~1.5 s instead of ~9 s, still long enough to kill
    the run between two steps. (Training the whole model is test_dpo_trainer's and the main
    job's business.)"""
    out, layers = tmp_path_factory.mktemp("shallow"), 6
    config = json.loads((default_model_dir / "config.json").read_text()) | {"num_hidden_layers": layers}
    (out / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(default_model_dir / name, out)
    kept = lambda name: not name.startswith("model.layers.") or int(name.split(".")[2]) < layers  # noqa: E731
    weights = load_file(default_model_dir / "model.safetensors")
    save_file({k: v for k, v in weights.items() if kept(k)}, out / "model.safetensors", metadata={"format": "pt"})
    return out
