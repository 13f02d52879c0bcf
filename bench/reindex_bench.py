"""Building the store's index on Ray against building it in this process, on the same synthetic store.

`python -m emoreact.bench.reindex_bench --size N [--workers W]` writes a synthetic store of N x 512
(bench/synthetic_store.py, shards of 65,536 rows), then rebuilds its IVF index twice in one run:
in-process (the baseline, `Store.reindex`) and on a local Ray (`RayIndexBuilder`); for each, the wall
time of the whole reindex (train, add, merge, tune, publish), the time the tasks or the in-process add
took is inside it, and recall@10 of the store's search against exact search on held-out queries.
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


def run(size: int = 200_000, workers: int | None = None, index: str = "ivf") -> dict:
    """Gives {environment, size, local: {...}, ray: {...}} (see the module docstring)."""
    import ray
    import torch

    from emoreact.index.ray_build import RayIndexBuilder
    from emoreact.rayutil import RayConfig

    folder = Path(tempfile.mkdtemp(prefix="emoreact-bench-reindex-"))
    mixture = Mixture()
    try:
        write_store(folder / "store", size, mixture, index="flat").close()
        queries = held_out_queries(QUERIES, mixture)
        out = {"environment": environment(torch.device("cpu")), "size": size, "index": index}
        ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        try:
            builder = RayIndexBuilder(RayConfig(workers=workers))
            for name, build in (("local", None), ("ray", builder)):
                with Store.open_for_writing(folder / "store") as store:
                    start = time.perf_counter()
                    settings = store.reindex(index, builder=build)
                    seconds = time.perf_counter() - start
                out[name] = {"seconds": round(seconds, 1), "recall_at_10": _recall(folder / "store", queries),
                             **{k: settings.to_json()[k] for k in ("factory", "nprobe", "candidates")}}
            out["ray"]["added_per_node"] = builder.added_per_node_
            out["ray_over_local_seconds"] = round(out["ray"]["seconds"] / out["local"]["seconds"], 2)
        finally:
            ray.shutdown()
        return out
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _recall(path: Path, queries: np.ndarray) -> float:
    with Store.open(path) as store:
        _, truth = brute_force_search(store.vectors(), queries, 10)
        _, ids = store.search(queries, 10)
    return round(float(np.mean([len(set(a) & set(t)) / 10 for a, t in zip(ids.tolist(), truth.tolist())])), 4)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--index", default="ivf")
    args = parser.parse_args()
    print(json.dumps(run(args.size, args.workers, args.index), indent=2))
