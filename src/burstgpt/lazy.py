"""Lazy package exports: a package names what it exports and from which module, and the module is imported
on first use, so importing a light module of a package (say `burstgpt.workload.schema`) never pulls in the
heavy ones (scipy, the analysis) through the package's `__init__`."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module-level `__getattr__` for `package` resolving each name of `exports` (name -> submodule)."""

    def __getattr__(name: str) -> Any:  # noqa: N807 - the module hook's own name
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    return __getattr__
