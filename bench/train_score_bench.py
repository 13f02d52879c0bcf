"""Training and batch scoring on a large store: peak memory and time of `train` and `score`.

`python -m emoreact.bench.train_score_bench --store DIR [--size N]` writes a synthetic store of N x 512
into DIR if it holds none (bench/synthetic_store.py; every image labelled, 80/10/10 split), then runs
each command as its own process, as a user would (`python -m emoreact train|score ...`), and reads
that process's peak resident memory (its own `VmHWM`, see bench/measured.py):
- `train` (linear head) at each `--caps` value of `--max-train-rows`; 0 lifts the cap, the baseline:
  every labelled training image held in memory, as before the store was streamed;
- `score` of every image to Parquet; its baseline, in the same run, is the predictor's image-by-image
  answer (`Predictor.predict_vectors`, one result dict per image) on one block of the same vectors.
Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import environment


def run(store: str | Path, size: int = 2_000_000, caps: tuple[int, ...] = (500_000, 0)) -> dict:
    """Gives the figures above as a dict."""
    import torch

    store = Path(store)
    result = {"bench": "train_score", **environment(torch.device("cpu")), "store": str(store),
              "load_average_at_start": round(os.getloadavg()[0], 1)}
    if not (store / "manifest.json").exists():
        result["generate_seconds"] = _generate(store, size)
    from emoreact.index import Store

    with Store.open(store, with_index=False) as opened:
        result["images"] = len(opened)
    with tempfile.TemporaryDirectory(prefix="emoreact-bench-train-") as tmp:
        heads = {}
        for cap in caps:
            head = Path(tmp) / f"head-{cap}"
            seconds, rss, out = _child(["train", "--store", str(store), "--out", str(head), "--device", "cpu",
                                        "--max-train-rows", str(cap), "--no-feedback"])
            metrics = json.loads((head / "metrics_test.json").read_text())
            heads[cap] = head
            result[f"train_cap_{cap or 'none'}"] = {
                "seconds": seconds, "cpu_seconds": _child.cpu_seconds, "peak_rss_mib": rss,
                "train_rows": metrics.get("train_rows"),
                "val_rows": metrics.get("val_rows"), "test_count": metrics["count"],
                "test_macro_f1": round(metrics["macro_f1"], 4), "summary": out}
        head = heads[caps[0]]
        parquet = Path(tmp) / "scores.parquet"
        seconds, rss, out = _child(["score", "--store", str(store), "--head", str(head), "--out", str(parquet),
                                    "--no-progress"])
        summary = json.loads(out)
        result["score"] = {"seconds": seconds, "cpu_seconds": _child.cpu_seconds, "peak_rss_mib": rss,
                           "rows": summary["rows"],
                           "rows_per_s": round(summary["rows"] / seconds), "parquet_mib": round(parquet.stat().st_size / 2**20)}
        result["score_baseline_per_image"] = _per_image_rate(store, head)
        result["score_speedup"] = round(result["score"]["rows_per_s"] / result["score_baseline_per_image"]["rows_per_s"], 1)
    return result


def _generate(store: Path, size: int) -> float:
    from .synthetic_store import Mixture, write_store

    start = time.perf_counter()
    # Flat: no training or tuning (train and score never load the index); it holds N x D float32 while
    # it is built, so for 10M reuse a store `bench index --keep` wrote.
    write_store(store, size, Mixture.for_rows(size), index="flat").close()
    return round(time.perf_counter() - start, 1)


def _child(args: list[str]) -> tuple[float, float, str]:
    """Runs `python -m emoreact ARGS` (through bench/measured.py, which reads its peak memory); gives
    (wall seconds, peak RSS in MiB, its standard output) and records its CPU seconds (user + system) in
    `_child.cpu_seconds`: on a shared machine the wall time depends on the other processes, the CPU time
    much less."""
    with tempfile.TemporaryDirectory() as tmp:
        peak_file = Path(tmp) / "peak.json"
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "emoreact.bench.measured", str(peak_file), *args],
                                   stdout=subprocess.PIPE, text=True)
        out = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        seconds = round(time.perf_counter() - start, 1)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode:
            raise RuntimeError(f"`emoreact {' '.join(args)}` exited {process.returncode}")
        peak = json.loads(peak_file.read_text())["peak_rss_mib"]
    _child.cpu_seconds = round(usage.ru_utime + usage.ru_stime, 1)
    return seconds, peak, out.strip()


def _per_image_rate(store: Path, head: Path, rows: int = 65_536) -> dict:
    """Gives the rate of the predictor's image-by-image answers on one block of stored vectors."""
    from emoreact.heads import EmotionHead
    from emoreact.index import Store
    from emoreact.predictor import Predictor

    with Store.open(store, with_index=False) as opened:
        block = next(opened.blocks(rows))
    predictor = Predictor(_NoBackbone(), None, EmotionHead.load(head))
    start = time.perf_counter()
    predictor.predict_vectors(block.vectors, block.paths, k=0)
    seconds = time.perf_counter() - start
    return {"rows": len(block.ids), "seconds": round(seconds, 2), "rows_per_s": round(len(block.ids) / seconds)}


class _NoBackbone:
    """Stands in for a backbone: scoring stored vectors runs no model."""

    class preprocess:
        image_size = (224, 224)

    class device:
        type = "cpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="Store folder (written first if it holds no store).")
    parser.add_argument("--size", type=int, default=2_000_000, help="Images of a new synthetic store.")
    parser.add_argument("--caps", default="500000,0", help="--max-train-rows values to train with (0: no cap).")
    args = parser.parse_args()
    print(json.dumps(run(args.store, args.size, tuple(int(c) for c in args.caps.split(","))), indent=2))


if __name__ == "__main__":
    main()
