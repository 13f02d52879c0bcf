"""Package namespaces that import on first use (PEP 562), so that `emoreact --help` or
`from emoreact.embed import DEFAULT_MODEL` does not import torch, faiss and open_clip first.

A package lists each public name with the module that defines it; `from package import name` and
`package.name` then import that module when the name is first asked for, and keep the value.
"""
from __future__ import annotations

import importlib
from typing import Callable


def lazy_exports(package: str, exports: dict[str, str], namespace: dict) -> tuple[list[str], Callable, Callable]:
    """Gives (__all__, __getattr__, __dir__) for `package`, whose `exports` map each public name to its
    module ("module" or "module:attribute" when the name differs, relative to the package unless it
    starts with "emoreact."); `namespace` is the package's globals(), where loaded values are kept."""

    def __getattr__(name: str):
        try:
            target = exports[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        module, _, attribute = target.partition(":")
        where = module if module.startswith("emoreact.") else f"{package}.{module}"
        value = getattr(importlib.import_module(where), attribute or name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return list(exports), __getattr__, __dir__
