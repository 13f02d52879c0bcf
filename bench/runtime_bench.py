"""The model's runtimes side by side on the CPU: torch fp32 (the baseline), ONNX Runtime fp32 and int8.

For each, in one run: the model alone (images/s on ready tensors), the embed job (images/s from JPEG files
to a finished store), `/api/predict` p50/p95 for one upload at 1 and 16 clients with where one request's
time goes (decode, preprocessing, model, search, head and result, JSON); for ViT-B-32 with random weights
(speed) and the bundled model (speed, and agreement with torch fp32: cosines, and the demo head's
macro-F1). What was tried and not kept (torch's own int8, other thread counts) is measured too.
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from emoreact.embed import EmbedConfig, ModelSpec, Record, load_backbone, run_embed_job
from emoreact.index import Store

from .api_bench import _load
from .common import environment, write_photos

VARIANTS = (("torch", "fp32"), ("onnx", "fp32"), ("onnx", "int8"))
BUNDLED = ModelSpec("emoreact-emoji-s", "emoreact")


def run(model: str = "ViT-B-32", seconds: float = 10.0, images: int = 128, rounds: int = 3,
        demo_f1: bool = True) -> dict:
    """Gives the figures of every runtime for `model` (random weights) and the bundled model, on the CPU."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        photos = write_photos(root / "photos", images)
        speed = _model_figures(ModelSpec(model, "none"), photos, root, seconds, rounds, api=True)
        bundled = _model_figures(BUNDLED, photos, root, seconds, rounds, api=False)
        bundled["agreement"] = _agreement(photos, root, demo_f1)
    base = speed["variants"]["torch/fp32"]
    targets = {}
    for name, figures in speed["variants"].items():
        if name == "torch/fp32":
            continue
        targets[name] = {
            "model_only_x": round(figures["model_only_images_per_s"] / base["model_only_images_per_s"], 2),
            "embed_job_x": round(figures["embed_job_images_per_s"] / base["embed_job_images_per_s"], 2),
            "api_p50_c1_fraction": round(figures["api"]["concurrency_1"]["p50_ms"]
                                         / base["api"]["concurrency_1"]["p50_ms"], 2)}
    return {"bench": "runtime", **environment(torch.device("cpu")), "model": model, "images": images,
            "rounds": rounds, "seconds_per_level": seconds, model: speed, BUNDLED.model: bundled,
            "vs_torch_fp32": targets,
            "note": "best of the rounds for model-only and embed-job figures, each variant measured in turn within "
                    "a round; the API breakdown is the median of one upload's stages timed apart in-process "
                    "(server = HTTP p50 at 1 client minus their sum: waitress, multipart parsing, Flask)"}


def _model_figures(spec: ModelSpec, photos: list[Path], root: Path, seconds: float, rounds: int, api: bool) -> dict:
    backbones = {f"{r}/{p}": load_backbone(replace(spec, runtime=r, precision=p), "cpu") for r, p in VARIANTS}
    base = backbones["torch/fp32"]
    h, w = base.preprocess.image_size
    ready = torch.randn(16, 3, h, w)
    tried = _tried_not_kept(base, backbones["onnx/int8"], ready)
    model_only = dict.fromkeys(backbones, 0.0)
    embed_job = dict.fromkeys(backbones, 0.0)
    for _ in range(rounds):  # in turn within each round: a busy moment of the machine hits all alike
        for name, backbone in backbones.items():
            backbone.encode_images(ready[:2])  # warm-up
            model_only[name] = max(model_only[name], _rate(lambda b=backbone: b.encode_images(ready), len(ready), 3))
            embed_job[name] = max(embed_job[name], _rate(lambda b=backbone: _embed_job(b, photos, root), len(photos)))
    variants = {name: {"model_id": backbones[name].spec.model_id,
                       "model_only_images_per_s": round(model_only[name], 1),
                       "embed_job_images_per_s": round(embed_job[name], 1),
                       "embed_job_fraction_of_model_only": round(embed_job[name] / model_only[name], 2)}
                for name in backbones}
    if api:
        for name, backbone in backbones.items():
            variants[name]["api"] = _api(backbone.spec, photos[:48], root / f"api-{name.replace('/', '-')}", seconds)
    return {"model_id": base.spec.model_id, "variants": variants, "tried_not_kept_model_only_images_per_s": tried}


def _rate(fn, count: int, repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return count * repeat / (time.perf_counter() - start)


def _embed_job(backbone, photos: list[Path], root: Path) -> None:
    # Random weights make every image a near-duplicate of every other: grouping is left out, as in bench embed.
    config = EmbedConfig(batch_size=64, workers=2, progress=False, near_duplicate_threshold=None)
    with Store.create_or_resume(Path(tempfile.mkdtemp(dir=root)), backbone.spec.model_id, backbone.dim, {},
                                []) as store:
        run_embed_job([Record(p, None) for p in photos], store, backbone, config)


def _tried_not_kept(base, onnx_int8, ready: torch.Tensor) -> dict:
    """Gives model-only images/s of what was tried and not kept: torch's dynamic int8 of the linear layers, and
    ONNX Runtime int8 at 1 thread and at 2 threads beside torch fp32 in the same breath."""
    import warnings

    from emoreact.embed.runtime import OnnxTower

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice
        quantised = torch.ao.quantization.quantize_dynamic(base.model.visual, {torch.nn.Linear}, dtype=torch.qint8)
    one_thread = OnnxTower(onnx_int8.towers.image.path, threads=1)
    pixels = ready.numpy()
    with torch.inference_mode():
        one_thread(pixels[:2])
        figures = {"torch_fp32": _rate(lambda: base.encode_images(ready), len(ready), 2),
                   "onnx_int8_1_thread": _rate(lambda: one_thread(pixels), len(ready), 2),
                   "onnx_int8_2_threads": _rate(lambda: onnx_int8.encode_images(ready), len(ready), 2)}
        try:
            quantised(ready[:2])
            figures["torch_dynamic_int8_linear"] = _rate(lambda: quantised(ready), len(ready), 2)
        except (TypeError, RuntimeError) as exc:  # open_clip's ResNet attention pool reads its Linear's bias
            figures["torch_dynamic_int8_linear"] = f"fails: {exc}"
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in figures.items()}


def _api(spec: ModelSpec, photos: list[Path], root: Path, seconds: float) -> dict:
    """Gives /api/predict p50/p95 at 1 and 16 clients for one upload, and one request's stages timed apart."""
    from emoreact.heads import HeadConfig, load_label_config
    from emoreact.pipeline import embed_source, train_from_store
    from emoreact.predictor import load
    from emoreact.web import WebConfig, create_app
    from emoreact.web.server import background_server

    labels = load_label_config()
    manifest = root / "m.csv"
    root.mkdir(parents=True)
    manifest.write_text("path,labels\n" + "".join(f"{p},{labels.names[i % 8]}\n" for i, p in enumerate(photos)))
    embed_source(manifest, root / "store", spec, labels=labels, device="cpu",
                 config=EmbedConfig(workers=0, progress=False, near_duplicate_threshold=None,
                                    runtime=spec.runtime, precision=spec.precision))
    train_from_store(root / "store", root / "head", HeadConfig(epochs=5), labels, "cpu")
    uploads = [p.read_bytes() for p in photos[:16]]
    predictor = load(root / "store", root / "head", device="cpu", runtime=spec.runtime, precision=spec.precision)
    config = WebConfig(store=root / "store", head=root / "head", device="cpu", runtime=spec.runtime,
                       precision=spec.precision, loader=lambda _config, p=predictor: p)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # 16 clients queue by design: not news
    with background_server(create_app(config), threads=16) as url:
        host, port = url.removeprefix("http://").split(":")
        _load(host, int(port), uploads, 1, 2.0)  # warm-up
        levels = {f"concurrency_{c}": _load(host, int(port), uploads, c, seconds) for c in (1, 16)}
    stages = _stages(predictor, uploads)
    stages["server_ms"] = round(levels["concurrency_1"]["p50_ms"] - sum(stages.values()), 1)
    predictor.close()
    return {**levels, "breakdown_p50_ms": stages}


def _stages(predictor, uploads: list[bytes], repeat: int = 24) -> dict:
    """Gives the median milliseconds of one upload's stages, each timed apart, as the server runs them."""
    from emoreact.embed import decode_image

    times: dict[str, list[float]] = {k: [] for k in ("decode", "preprocess", "model", "search", "head_and_result",
                                                      "json")}
    for n in range(repeat):
        data = uploads[n % len(uploads)]
        t0 = time.perf_counter()
        image = decode_image(data, predictor.max_pixels, predictor._min_side)
        t1 = time.perf_counter()
        batch = torch.stack([predictor.backbone.transform(image)])
        t2 = time.perf_counter()
        vectors = predictor.backbone.encode_images(batch).numpy()
        t3 = time.perf_counter()
        predictor.store.search(vectors, 5)
        t4 = time.perf_counter()
        result = predictor.predict_images([image], ["photo.jpg"], 5, [None])
        t5 = time.perf_counter()
        json.dumps({"results": result})
        t6 = time.perf_counter()
        # predict_images runs preprocessing, model and search again: its own share is what is left
        for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, (t5 - t4) - (t4 - t1), t6 - t5)):
            times[key].append(max(0.0, value) * 1000)
    return {f"{k}_ms": round(float(np.median(v)), 1) for k, v in times.items()}


def _agreement(photos: list[Path], root: Path, demo_f1: bool) -> dict:
    """Gives the bundled model's agreement with torch fp32: cosines on the photos and the demo's images, and
    the demo head's test macro-F1 for each runtime (the demo built with it)."""
    from PIL import Image

    from emoreact.offline_demo import DEMO_DIR, demo_records

    pictures = [Image.open(p).convert("RGB") for p in photos[:64]]
    pictures += [Image.open(r.path).convert("RGB") for r in demo_records(DEMO_DIR)[::8]]
    backbones = {f"{r}/{p}": load_backbone(replace(BUNDLED, runtime=r, precision=p), "cpu") for r, p in VARIANTS}
    batch = torch.stack([backbones["torch/fp32"].transform(p) for p in pictures])
    reference = backbones["torch/fp32"].encode_images(batch)
    result = {"images": len(pictures)}
    for name, backbone in backbones.items():
        if name == "torch/fp32":
            continue
        cosines = (backbone.encode_images(batch) * reference).sum(-1).numpy()
        result[name] = {"cosine_min": round(float(cosines.min()), 6), "cosine_mean": round(float(cosines.mean()), 6)}
    if demo_f1:
        from emoreact.labels import load_label_config
        from emoreact.offline_demo import run_demo

        for name in backbones:
            runtime, precision = name.split("/")
            summary = run_demo(root / f"demo-{runtime}-{precision}", load_label_config(),
                               replace(BUNDLED, runtime=runtime, precision=precision), "cpu")
            result.setdefault(name, {})["demo_test_macro_f1"] = summary["test_macro_f1"]
        for name in backbones:
            if name != "torch/fp32":
                result[name]["demo_macro_f1_minus_torch_fp32"] = round(
                    result[name]["demo_test_macro_f1"] - result["torch/fp32"]["demo_test_macro_f1"], 4)
    return result
