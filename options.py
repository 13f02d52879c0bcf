"""Settings given by name: a frozen config dataclass with some fields replaced, unknown names refused.

`emoreact.embed_source(..., batch_size=256)`, `emoreact.train(..., loss="focal")` and
`emoreact.load(..., device="cpu")` all take their config's fields as keywords through this one function.
"""
from __future__ import annotations

from dataclasses import fields, replace
from typing import TypeVar

Config = TypeVar("Config")


def with_options(config: Config, options: dict) -> Config:
    """Gives the dataclass `config` with `options` replaced, or a TypeError naming the unknown option."""
    known = {f.name for f in fields(config)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown option {unknown[0]!r}; {type(config).__name__} has {sorted(known)}")
    return replace(config, **options)
