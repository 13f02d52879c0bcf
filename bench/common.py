"""Shared pieces of the benchmarks: synthetic data and timing."""
from __future__ import annotations

import io
import platform
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def environment(device: torch.device) -> dict:
    """Gives what a figure depends on: device, CPU threads, versions, commit."""
    import torch  # here, not at the top: bench/measured.py starts commands that may not need it

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except OSError:
        commit = ""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})"
    return {"device": name, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "commit": commit}


def peak_rss_mib() -> int | None:
    """Gives this process's peak resident memory in MiB since it started (`VmHWM`; None off Linux).

    Not `getrusage(...).ru_maxrss`: in a process started by another, that also counts the memory the
    parent held when it forked, so it can report the benchmark's own size instead of the program's."""
    return _status_mib("VmHWM")


def rss_mib() -> int | None:
    """Gives this process's resident memory now, in MiB (`VmRSS`; None off Linux)."""
    return _status_mib("VmRSS")


def _status_mib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) // 1024 for line in status if line.startswith(f"{field}:"))
    except (OSError, StopIteration):
        return None


def write_photos(folder: Path, count: int, size=(640, 480), seed: int = 0, processes: int | None = None) -> list[Path]:
    """Writes `count` photo-like JPEGs (smooth gradients, shapes and noise); gives their paths.

    Each image has its own seed, so the files are the same however many processes draw them. By default
    one process per 256 images, up to one per core (a GPU benchmark wants tens of thousands)."""
    import os
    from concurrent.futures import ProcessPoolExecutor

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{n:06d}.jpg" for n in range(count)]
    jobs = [(path, size, (seed, n)) for n, path in enumerate(paths)]
    processes = processes or min(os.cpu_count() or 1, count // 256)
    if processes > 1:
        with ProcessPoolExecutor(processes) as pool:
            list(pool.map(_write_photo, jobs, chunksize=64))
    else:
        for job in jobs:
            _write_photo(job)
    return paths


def _write_photo(job: tuple[Path, tuple[int, int], tuple[int, int]]) -> None:
    from PIL import Image, ImageDraw

    path, size, seed = job
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, size[0])[None, :, None]
    y = np.linspace(0, 1, size[1])[:, None, None]
    base = rng.uniform(0, 255, 3) * x + rng.uniform(0, 255, 3) * y
    noise = rng.normal(0, 12, (size[1], size[0], 3))
    image = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(image)
    for _ in range(5):
        box = sorted(rng.integers(0, size[0], 2)), sorted(rng.integers(0, size[1], 2))
        pen.ellipse((box[0][0], box[1][0], box[0][1], box[1][1]), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=88)
    path.write_bytes(buffer.getvalue())


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    """Gives (best seconds over `repeat` runs, last result)."""
    import torch

    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, result
