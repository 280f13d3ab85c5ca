"""Lazy package exports: each stage package names its public pieces without importing them.

Importing ``radmtl.data.io`` must not pull MONAI and torch in through ``radmtl/data/__init__.py``
(the CLI's start-up and ``radmtl check`` stay light), so a package's ``__init__`` maps each public
name to its module and imports it on first access (PEP 562).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], list[str]]:
    """``__getattr__`` and ``__all__`` for ``package``; ``exports`` maps a public name to its module."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, sorted(exports)
