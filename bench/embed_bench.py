"""Embedding throughput: our job vs the plain PIL DataLoader pipeline vs the model alone, or (engine "ray")
the Ray engine's job vs the local engine's on the same images."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from emoreact.embed import EmbedConfig, ModelSpec, Record, load_backbone, run_embed_job
from emoreact.index import Store

from .common import environment, timed, write_photos


class _PilFiles(Dataset):
    """What most CLIP code does: PIL open + convert + open_clip's transform, per file."""

    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.transform(Image.open(self.paths[i]).convert("RGB"))


def run(model: str = "ViT-B-32", images: int = 256, batch_size: int | None = None, workers: int | None = None,
        device: str = "auto", rounds: int = 3, engine: str = "local") -> dict:
    """Gives images/s of the limit, the baseline and our job, measured in one process.

    The three are measured in turn, `rounds` times, and each keeps its best round: on a shared
    machine a single pass of each is at the mercy of whatever else runs at that moment.
    Defaults: batch 64 and 2 decode workers on the CPU; batch 512 and up to 16 workers on a GPU.
    On a GPU, our job is also measured without decoding ahead (`EmbedConfig.decode_ahead=0`), and
    `stages` gives each stage of the fast path alone on the same files, to show which one limits.
    With `engine="ray"`, gives the Ray engine's images/s against the local engine's instead.
    """
    gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    batch_size = batch_size or (512 if gpu else 64)
    workers = workers if workers is not None else (min(16, os.cpu_count() or 1) if gpu else 2)
    if engine == "ray":
        return run_ray(model, images, batch_size, workers, device, rounds)
    backbone = load_backbone(ModelSpec(model, "none"), device)
    gpu = backbone.device.type == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_photos(Path(tmp) / "photos", images)
        h, w = backbone.preprocess.image_size
        ready = torch.randn(batch_size, 3, h, w, device=backbone.device)
        backbone.encode_images(ready)  # warm-up
        steps = max(1, images // batch_size)

        def limit():
            for _ in range(steps):
                backbone.encode_images(ready)

        def baseline():
            loader = DataLoader(_PilFiles(paths, backbone.transform), batch_size=batch_size, num_workers=workers,
                                pin_memory=gpu)
            for batch in loader:
                backbone.encode_images(batch).cpu()

        def job(decode_ahead: int):
            # Random weights make every image a near-duplicate of every other: grouping them would cost
            # N^2 pairs that real features never give, so the bench leaves splits alone.
            config = EmbedConfig(batch_size=batch_size, workers=workers, progress=False, decode_ahead=decode_ahead,
                                 near_duplicate_threshold=None)
            with Store.create_or_resume(Path(tempfile.mkdtemp(dir=tmp)), backbone.spec.model_id, backbone.dim, {},
                                        []) as store:
                run_embed_job([Record(p, None) for p in paths], store, backbone, config)

        runs = {"limit": limit, "baseline": baseline, "ours": lambda: job(EmbedConfig.decode_ahead)}
        if gpu:
            runs["ours_decode_in_turn"] = lambda: job(0)
        best = dict.fromkeys(runs, float("inf"))
        for _ in range(rounds):
            for name, fn in runs.items():
                best[name] = min(best[name], timed(fn)[0])
        stages = _fast_path_stages(paths, backbone, batch_size, workers) if gpu else None
    rate = lambda seconds, count=images: round(count / seconds, 1)  # noqa: E731
    limit_rate = rate(best["limit"], steps * batch_size)
    result = {"bench": "embed", **environment(backbone.device), "model": model, "images": images,
              "image_size": "640x480 JPEG", "batch_size": batch_size, "workers": workers, "rounds": rounds,
              "ours_images_per_s": rate(best["ours"]), "baseline_pil_dataloader_images_per_s": rate(best["baseline"]),
              "limit_model_only_images_per_s": limit_rate,
              "ratio_vs_baseline": round(best["baseline"] / best["ours"], 2),
              "fraction_of_limit": round(rate(best["ours"]) / limit_rate, 3)}
    if gpu:
        result["ours_decode_in_turn_images_per_s"] = rate(best["ours_decode_in_turn"])
        result["stages_images_per_s"] = stages
    result["note"] = ("best of the rounds for each; ours includes reading, hashing, store writes and the FAISS "
                      "build (near-duplicate grouping off: random weights make all images alike); on the CPU path "
                      "JPEGs decode at reduced scale (EmbedConfig.reduced_jpeg_decode), on a GPU through nvJPEG; "
                      "random weights (speed only)")
    return result


def _decode_in_threads(batches: list, device, threads: int) -> None:
    """Decodes the batches on `threads` threads, each on a CUDA stream of its own: does nvJPEG scale?"""
    from concurrent.futures import ThreadPoolExecutor

    from emoreact.embed.fastpath import decode_jpegs

    streams = [torch.cuda.Stream(device) for _ in range(threads)]

    def decode(n: int) -> None:
        with torch.cuda.stream(streams[n % threads]):
            decode_jpegs(batches[n], device)
            torch.cuda.current_stream(device).synchronize()

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(decode, range(len(batches))))


def _fast_path_stages(paths: list[Path], backbone, batch_size: int, workers: int) -> dict:
    """Gives images/s of each stage of the GPU fast path alone, on the same files: read and hash (DataLoader
    workers), nvJPEG decode, preprocessing (batched, and image by image as before) and the model."""
    from emoreact.embed.fastpath import decode_jpegs, preprocess_tensors
    from emoreact.embed.job import _collate, _ImageFiles, _uncollate

    dataset = _ImageFiles([Record(p, None) for p in paths], backbone.transform, set(), 10**9, fast_jpeg=True)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_collate)
    read_s, batches = timed(lambda: [[item["jpeg"] for item in _uncollate(batch)] for batch in loader])
    decode_s, decoded = timed(lambda: [decode_jpegs(datas, backbone.device) for datas in batches])
    threads_s = {threads: timed(lambda: _decode_in_threads(batches, backbone.device, threads))[0] for threads in (2, 4)}
    batched_s, tensors = timed(lambda: [preprocess_tensors(images, backbone.preprocess) for images in decoded])
    one_by_one_s, _ = timed(lambda: [[preprocess_tensors([i], backbone.preprocess) for i in images]
                                     for images in decoded])
    model_s, _ = timed(lambda: [backbone.encode_images(t).cpu() for t in tensors])
    count = len(paths)
    return {"read_and_hash": round(count / read_s, 1), "nvjpeg_decode": round(count / decode_s, 1),
            **{f"nvjpeg_decode_{n}_threads": round(count / t, 1) for n, t in threads_s.items()},
            "preprocess_batched": round(count / batched_s, 1),
            "preprocess_image_by_image": round(count / one_by_one_s, 1),
            "model": round(count / model_s, 1)}


def run_ray(model: str = "ViT-B-32", images: int = 256, batch_size: int = 64, workers: int = 2,
            device: str = "auto", rounds: int = 3) -> dict:
    """Gives images/s of the embed job on the Ray engine and on the local engine, same images, one process.

    Each engine runs whole jobs, from records to a finished store, model loading included (a Ray job
    starts its workers, each loading the model), on a quarter of the images and on all of them. The
    steady rate is what the extra images cost: (N - N/4) / (t_N - t_N/4), free of each engine's fixed
    start-up; the whole-job rate is N / t_N. Starting Ray itself (once per session) is reported apart.
    Jobs take turns, `rounds` times, and each timing keeps its best.
    """
    from emoreact.embed import engine_for, require_ray, run_engine

    ray = require_ray()
    backbone = load_backbone(ModelSpec(model, "none"), device)
    worker_device = "cpu" if backbone.device.type == "cpu" else "cuda"
    start = time.perf_counter()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(include_dashboard=False, log_to_driver=False)
    ray_start_s = time.perf_counter() - start
    config = EmbedConfig(batch_size=batch_size, workers=workers, progress=False)
    quarter = max(1, images // 4)
    reports = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            records = [Record(p, None) for p in write_photos(Path(tmp) / "photos", images)]

            def store():
                return Store.create_or_resume(Path(tempfile.mkdtemp(dir=tmp)), backbone.spec.model_id, backbone.dim,
                                              {}, [])

            def local(count):
                with store() as target:
                    run_embed_job(records[:count], target, load_backbone(backbone.spec, device), config)

            def on_ray(count):
                with store() as target:
                    engine = engine_for("ray", worker_device)
                    reports.append(run_engine(engine, records[:count], target, engine.backbone(backbone.spec), config))

            best = {}
            for _ in range(rounds):
                for name, fn in (("local", local), ("ray", on_ray)):
                    for count in (quarter, images):
                        seconds = timed(lambda: fn(count))[0]
                        best[name, count] = min(best.get((name, count), float("inf")), seconds)
    finally:
        if started_here:
            ray.shutdown()
    steady = {name: (images - quarter) / max(best[name, images] - best[name, quarter], 1e-9)
              for name in ("local", "ray")}
    whole = {name: images / best[name, images] for name in ("local", "ray")}
    return {"bench": "embed", "engine": "ray", **environment(backbone.device), "model": model, "images": images,
            "image_size": "640x480 JPEG", "batch_size": batch_size, "local_decode_workers": workers,
            "ray_workers": reports[-1].workers, "ray_nodes": reports[-1].nodes, "rounds": rounds,
            "ray_images_per_s": round(steady["ray"], 1), "local_images_per_s": round(steady["local"], 1),
            "ratio_ray_vs_local": round(steady["ray"] / steady["local"], 2),
            "whole_job_ray_images_per_s": round(whole["ray"], 1),
            "whole_job_local_images_per_s": round(whole["local"], 1),
            "whole_job_ratio": round(whole["ray"] / whole["local"], 2),
            "fixed_start_s": {name: round(best[name, images] - images / steady[name], 1) for name in ("local", "ray")},
            "ray_start_s": round(ray_start_s, 1),
            "note": f"steady: the images past the first {quarter} over the extra time they took; whole job: all "
                    "images over one job's time, start-up included; best of the rounds for each timing; "
                    "random weights (speed only)"}
