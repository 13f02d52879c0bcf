"""Embedding throughput: our job vs the plain PIL DataLoader pipeline vs the model alone, or (engine "ray")
the Ray engine's job vs the local engine's on the same images."""
from __future__ import annotations

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


def run(model: str = "ViT-B-32", images: int = 256, batch_size: int = 64, workers: int = 2,
        device: str = "auto", rounds: int = 3, engine: str = "local") -> dict:
    """Gives images/s of the limit, the baseline and our job, measured in one process.

    The three are measured in turn, `rounds` times, and each keeps its best round: on a shared
    machine a single pass of each is at the mercy of whatever else runs at that moment.
    With `engine="ray"`, gives the Ray engine's images/s against the local engine's instead.
    """
    if engine == "ray":
        return run_ray(model, images, batch_size, workers, device, rounds)
    backbone = load_backbone(ModelSpec(model, "none"), device)
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
                                pin_memory=backbone.device.type == "cuda")
            for batch in loader:
                backbone.encode_images(batch).cpu()

        def ours():
            store = Store.create_or_resume(Path(tempfile.mkdtemp(dir=tmp)), backbone.spec.model_id, backbone.dim, {}, [])
            run_embed_job([Record(p, None) for p in paths], store, backbone,
                          EmbedConfig(batch_size=batch_size, workers=workers, progress=False))
            store.close()

        best = {"limit": float("inf"), "baseline": float("inf"), "ours": float("inf")}
        for _ in range(rounds):
            for name, fn in (("limit", limit), ("baseline", baseline), ("ours", ours)):
                best[name] = min(best[name], timed(fn)[0])
        limit_s, baseline_s, ours_s = best["limit"], best["baseline"], best["ours"]
    rate = lambda seconds, count=images: round(count / seconds, 1)  # noqa: E731
    return {"bench": "embed", **environment(backbone.device), "model": model, "images": images,
            "image_size": "640x480 JPEG", "batch_size": batch_size, "workers": workers, "rounds": rounds,
            "ours_images_per_s": rate(ours_s), "baseline_pil_dataloader_images_per_s": rate(baseline_s),
            "limit_model_only_images_per_s": rate(limit_s, steps * batch_size),
            "ratio_vs_baseline": round(baseline_s / ours_s, 2),
            "fraction_of_limit": round(rate(ours_s) / rate(limit_s, steps * batch_size), 3),
            "note": "best of the rounds for each; ours includes hashing, store writes and the FAISS build, and on "
                    "the CPU path decodes JPEGs at reduced scale (EmbedConfig.reduced_jpeg_decode); "
                    "random weights (speed only)"}


def run_ray(model: str = "ViT-B-32", images: int = 256, batch_size: int = 64, workers: int = 2,
            device: str = "auto", rounds: int = 3) -> dict:
    """Gives images/s of the embed job on the Ray engine and on the local engine, same images, one process.

    Each engine runs whole jobs, from records to a finished store, model loading included (a Ray job
    starts its workers, each loading the model), on a quarter of the images and on all of them. The
    steady rate is what the extra images cost: (N - N/4) / (t_N - t_N/4), free of each engine's fixed
    start-up; the whole-job rate is N / t_N. Starting Ray itself (once per session) is reported apart.
    Jobs take turns, `rounds` times, and each timing keeps its best.
    """
    from emoreact.embed import RayConfig, require_ray, run_ray_embed_job

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
                target = store()
                run_embed_job(records[:count], target, load_backbone(backbone.spec, device), config)
                target.close()

            def on_ray(count):
                target = store()
                reports.append(run_ray_embed_job(records[:count], target, load_backbone(backbone.spec, "cpu"), config,
                                                 RayConfig(), worker_device))
                target.close()

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
