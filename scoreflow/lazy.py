"""Package namespaces that import their modules on first use (PEP 562).

`from scoreflow.llama import load_model` stays the public spelling, while importing a light
module of the package (`scoreflow.llama.registry`: model names and paths) or a command checking
its flags no longer imports torch (seconds of import time: bench/RESULTS.md, "Suite time") through
the package's `__init__`.
"""

from __future__ import annotations

import sys
from importlib import import_module
from typing import Any, Callable


def lazy_exports(package: str, homes: dict[str, tuple[str, ...]]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """-> (`__getattr__`, `__dir__`, `__all__`) for `package`, where homes maps each submodule
    to the names it defines that the package exports: {"load": ("load_model",), ...}."""
    home = {name: module for module, names in homes.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in home:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f"{package}.{home[name]}"), name)
        setattr(sys.modules[package], name, value)  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(home))

    return __getattr__, __dir__, sorted(home)
