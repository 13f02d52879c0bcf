"""Building the store's index on Ray against building it in this process, on the same synthetic store.

`python -m emoreact.bench.reindex_bench --size N [--workers W]` writes a synthetic store of N x 512
(bench/synthetic_store.py, shards of 65,536 rows), then rebuilds its IVF index twice in one run:
in-process (the baseline, `Store.reindex`) and on a local Ray (`RayIndexBuilder`); for each, the wall
time of the whole reindex (train, add, merge, tune, publish), the time the tasks or the in-process add
took is inside it, and recall@10 of the store's search against exact search on held-out queries.
`--engines local` measures the in-process build alone, without Ray (the extra need not be installed).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from emoreact.index import Store, brute_force_search

from .common import environment
from .synthetic_store import Mixture, held_out_queries, write_store

QUERIES = 300
ENGINES = ("local", "ray")


def run(size: int = 200_000, workers: int | None = None, index: str = "ivf",
        engines: tuple[str, ...] = ENGINES) -> dict:
    """Gives {environment, size, index, and per engine of `engines` {seconds, recall_at_10, factory, nprobe,
    candidates}, with Ray's added_per_node, and ray_over_local_seconds when both ran} (see the module docstring)."""
    import torch

    unknown = [name for name in engines if name not in ENGINES]
    if unknown or not engines:
        raise ValueError(f"engines {','.join(engines) or '(none)'}: the engines are {' and '.join(ENGINES)}; "
                         "name one or both, e.g. --engines local,ray")
    folder = Path(tempfile.mkdtemp(prefix="emoreact-bench-reindex-"))
    mixture = Mixture()
    try:
        write_store(folder / "store", size, mixture, index="flat").close()
        queries = held_out_queries(QUERIES, mixture)
        out = {"environment": environment(torch.device("cpu")), "size": size, "index": index}
        for name in engines:
            if name == "local":
                out[name] = _reindex(folder / "store", index, None, queries)
            else:
                out[name] = _reindex_on_ray(folder / "store", index, workers, queries)
        if "local" in out and "ray" in out and out["local"]["seconds"]:
            out["ray_over_local_seconds"] = round(out["ray"]["seconds"] / out["local"]["seconds"], 2)
        return out
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _reindex_on_ray(path: Path, index: str, workers: int | None, queries: np.ndarray) -> dict:
    """Gives `_reindex`'s figures for a build on a local Ray, started here, and the vectors each node added."""
    import ray

    from emoreact.index.ray_build import RayIndexBuilder
    from emoreact.rayutil import RayConfig

    ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        builder = RayIndexBuilder(RayConfig(workers=workers))
        return {**_reindex(path, index, builder, queries), "added_per_node": builder.added_per_node_}
    finally:
        ray.shutdown()


def _reindex(path: Path, index: str, builder, queries: np.ndarray) -> dict:
    """Gives the wall seconds of one reindex of the store at `path` (in-process, or through `builder`), the
    recall@10 of its search on `queries` and the settings it chose."""
    with Store.open_for_writing(path) as store:
        start = time.perf_counter()
        settings = store.reindex(index, builder=builder)
        seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 1), "recall_at_10": _recall(path, queries),
            **{k: settings.to_json()[k] for k in ("factory", "nprobe", "candidates")}}


def _recall(path: Path, queries: np.ndarray) -> float:
    """Gives the mean share of each query's 10 exact nearest neighbours that the store's search finds."""
    with Store.open(path) as store:
        _, truth = brute_force_search(store.vectors(), queries, 10)
        _, ids = store.search(queries, 10)
    return round(float(np.mean([len(set(a) & set(t)) / 10 for a, t in zip(ids.tolist(), truth.tolist())])), 4)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--index", default="ivf")
    parser.add_argument("--engines", default=",".join(ENGINES), help="local, ray, or both (the default)")
    args = parser.parse_args()
    print(json.dumps(run(args.size, args.workers, args.index, tuple(args.engines.split(","))), indent=2))
