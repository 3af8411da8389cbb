"""Two commands started at once on a fresh machine (the README's two, say) both need an embedded
model converted: one converts it, the other waits for that copy instead of converting again and
replacing the folder the first one is reading."""

import time
from concurrent.futures import ThreadPoolExecutor

from scoreflow.llama import gguf, registry


def test_two_processes_at_once_convert_an_embedded_model_once(tmp_path, monkeypatch):
    monkeypatch.setenv("SCOREFLOW_CACHE", str(tmp_path))
    converted = []

    def slow_convert(gguf_path, out):
        converted.append(out)
        time.sleep(0.3)  # long enough for the second caller to arrive mid-conversion
        out.mkdir()
        (out / "model.safetensors").write_bytes(b"weights")
        return out

    monkeypatch.setattr(gguf, "convert_gguf", slow_convert)
    monkeypatch.setattr(registry, "embedded_gguf", lambda name: tmp_path / f"{name}.gguf")
    with ThreadPoolExecutor(2) as pool:  # flock excludes two open()s of the lock file, as two processes
        dirs = list(pool.map(lambda _: registry.resolve_model_dir(registry.DEFAULT_MODEL), range(2)))
    assert dirs == [tmp_path / registry.DEFAULT_MODEL] * 2 and len(converted) == 1
