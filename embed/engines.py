"""The embed engines: one interface, a table of them by name, and the end every job shares.

An engine adds a source's records to an open store; how it runs the model is its own business:

    local   one device: this process (`job.LocalEngine`); several: one process each (`parallel.DevicesEngine`)
    ray     a Ray cluster, through Ray Data (`ray_engine.RayEngine`)

`run_engine` wraps each of them alike: the store's known hashes go in; the store is then finished
(near-duplicates grouped, the index updated and published) and the report timed and logged. Adding
an engine is one module with a class that has `backbone` and `embed`, plus its line in `ENGINES`.
"""
from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable, Container
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from emoreact.index import Store
    from emoreact.rayutil import RayConfig

    from .identity import ModelSpec
    from .config import EmbedConfig
    from .job import EmbedReport
    from .models import Backbone
    from .readers import Record

log = logging.getLogger(__name__)

# name -> its factory, which takes (device, ray_config) and gives an Engine: "module:factory" in this package,
# imported when the engine is asked for (the CLI lists the names without loading torch or Ray), or the
# factory itself.
ENGINES: dict[str, str | Callable[[str, RayConfig | None], Engine]] = {
    "local": "parallel:local_engine",
    "ray": "ray_engine:RayEngine",
}


class Engine(Protocol):
    """How the embed job runs the model: in this process, in one process per device, or on a Ray cluster."""

    def backbone(self, spec: ModelSpec) -> Backbone:
        """Gives the backbone that names the store's model and preprocesses here (an engine whose workers
        load their own may load it on the CPU)."""

    def embed(self, records: list[Record], store: Store, backbone: Backbone, config: EmbedConfig,
              known: set[str]) -> EmbedReport:
        """Adds the records whose content hash is not in `known` to `store`, rows and skipped files committed
        shard by shard in input order; gives the report. The store is left unfinished (see `run_engine`)."""


def engine_for(name: str, device: str = "auto", ray_config: RayConfig | None = None) -> Engine:
    """Gives the engine registered as `name` for `device` (local: one device, a comma-separated list or
    cuda:all; ray: the workers' device, auto, cpu or cuda). An engine whose extra is missing raises at once."""
    try:
        factory = ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; use {' or '.join(ENGINES)}") from None
    if isinstance(factory, str):
        module, _, attribute = factory.partition(":")
        factory = getattr(importlib.import_module(f"{__package__}.{module}"), attribute)
    return factory(device, ray_config)


def run_engine(engine: Engine, records: list[Record], store: Store, backbone: Backbone, config: EmbedConfig,
               known: Container[str] = frozenset()) -> EmbedReport:
    """Embeds the records not yet in `store` (nor in `known`) with `engine`, records skipped files, finishes
    the store; gives the report."""
    start = time.perf_counter()
    known = store.known_hashes(tombstones=not config.allow_readd) | set(known)
    report = engine.embed(records, store, backbone, config, known)
    report.near_duplicate_groups_moved, report.near_duplicate_images_moved = \
        store.finish(config.near_duplicate_threshold, config.index)
    report.seconds = time.perf_counter() - start
    log.info("embed (%s engine): %s", report.engine, report.to_json())
    return report
