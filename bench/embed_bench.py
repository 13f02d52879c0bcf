"""Embedding throughput: our job vs the plain PIL DataLoader pipeline vs the model alone."""
from __future__ import annotations

import tempfile
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
        device: str = "auto", rounds: int = 3) -> dict:
    """Gives images/s of the limit, the baseline and our job, measured in one process.

    The three are measured in turn, `rounds` times, and each keeps its best round: on a shared
    machine a single pass of each is at the mercy of whatever else runs at that moment.
    """
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
