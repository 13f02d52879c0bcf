"""`bench clips`: how well clips are judged, against a reader of their first or middle frame and against the
same drawings as stills; how fast clips decode, cost the API and go through the embed job.

The store and head are the offline demo's, built alike: the demo's drawings embedded with the bundled emoji
CLIP (or `--model`), the demo's head trained on two art styles (Noto, Twemoji). The clips come from
emoreact/clipset.py, drawn from the third style (OpenMoji), which the head never saw: stretches of an
emotion on a neutral face, mixes of two emotions and static faces, as GIF, animated WebP and MP4, each
labelled with what it shows for at least `clipset.SHARE` of its time. Macro-F1 is over the six emotions
of postset.EMOTIONS (neutral is the absence of all six), for each pooling the predictor offers
(heads/frames.py: "share" applies the labels' own rule to the frames' scores).
"""
from __future__ import annotations

import io
import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from emoreact.clipset import FORMATS, KINDS, SHARE, art_names, make_clip, make_clips, still, write_clips
from emoreact.postset import EMOTIONS

from .common import environment

log = logging.getLogger(__name__)

SEED = 2  # the clip set's seed (the demo shows seed 0's)
API_SIDE = 256  # the API's GIF, MP4 and still are this many pixels square
API_MP4 = (10, 25)  # the API's video: seconds, frames per second
MODEL_RUNS = 30  # model-only timing: forward passes of one image, the median kept


def run(model: str = "emoreact-emoji-s", pretrained: str | None = None, per_kind: int = 20, device: str = "cpu",
        keep: str | Path | None = None) -> dict:
    """Gives macro-F1 of the first frame, the middle frame and the clip answer (per pooling) beside stills of
    the same art, decoding rates per format, the API's p50/p95 for an 8-frame GIF and a 10-second MP4 beside
    a still (2 x `per_kind` requests each), the embed job's clips/s beside stills/s, and the GIF target."""
    import torch

    from emoreact.embed import ModelSpec, default_pretrained, load_backbone
    from emoreact.heads import load_label_config
    from emoreact.offline_demo import DEMO_HEAD, DEMO_LABELS, demo_records
    from emoreact.pipeline import embed_records, train_from_store

    formats, no_video = _formats()
    labels = load_label_config(DEMO_LABELS)
    spec = ModelSpec(model, pretrained or default_pretrained(model))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(keep) if keep else Path(tmp)
        backbone = load_backbone(spec, device)
        embed_records(demo_records(), root / "store", backbone, labels, _embed_config())
        train_from_store(root / "store", root / "head", DEMO_HEAD, labels, device, spec.pretrained)
        clips = make_clips(seed=SEED, per_kind=per_kind, formats=formats)
        quality = _quality(root, clips, device)
        decoding = _decoding(clips, max(backbone.preprocess.image_size))
        api = _api(root, device, requests=2 * per_kind, formats=formats)
        job = _embed_job(root, clips, backbone, labels)
    gif, plain, model_ms = api["gif_8_frames"]["p95_ms"], api["still_image"]["p95_ms"], api["model_only_ms_per_image"]
    return {"bench": "clips", **environment(torch.device(device)), "model": spec.model_id,
            "clips": {"per_kind_and_format": per_kind, "kinds": list(KINDS), "formats": list(formats),
                      **({"mp4_left_out": no_video} if no_video else {}),
                      "label_share": SHARE, "art": "openmoji (held out from the head)"},
            "macro_f1": quality, "decoding": decoding, "api": api, "embed_job": job,
            "targets": {**_quality_targets(quality),
                        "gif_p95_within_still_p95_plus_7_model_ms": {
                            "gif_p95_ms": gif, "bound_ms": round(plain + 7 * model_ms, 1),
                            "met": gif <= plain + 7 * model_ms}}}


def _formats() -> tuple[tuple[str, ...], str | None]:
    """Gives (the clip formats this install decodes, why MP4 is left out or None): MP4 needs the video
    extra (PyAV), to make the clips and to decode them."""
    from emoreact.embed import ImageError
    from emoreact.embed.clips import decode_media

    try:
        decode_media(make_clip("static", "mp4", frames=2, side=32).data)
    except (ImportError, ImageError) as exc:
        log.warning("bench clips measures no MP4: %s", exc)
        return tuple(f for f in FORMATS if f != "mp4"), str(exc)
    return FORMATS, None


def _embed_config():
    from emoreact.embed import EmbedConfig

    # the clips of a kind share drawings: keep each where the bench puts it
    return EmbedConfig(workers=0, progress=False, near_duplicate_threshold=None)


# --- quality ----------------------------------------------------------------------------------------------

def _quality(root: Path, clips, device: str) -> dict:
    """Gives macro-F1 of each reader on the clips, overall and per kind, and of the stills of their art."""
    from emoreact import load
    from emoreact.heads import POOLINGS

    truth = _truth([c.labels for c in clips])
    decided: dict[str, np.ndarray] = {}
    for pooling in POOLINGS:
        with load(root / "store", root / "head", device=device, clip_pooling=pooling) as predictor:
            if "first_frame" not in decided:  # single frames are stills: pooling plays no part
                frames = [_frames(c) for c in clips]
                decided["first_frame"] = _decided(predictor, [f[0] for f in frames])
                decided["middle_frame"] = _decided(predictor, [f[c.middle_frame] for f, c in zip(frames, clips)])
                names = art_names()
                stills = _f1(_truth([labels for _, labels in names]), _decided(predictor, [still(n) for n, _ in names]))
            decided[f"clip_{pooling}"] = _decided(predictor, [c.data for c in clips])
    kinds = np.array([c.kind for c in clips])
    out = {"clips": len(clips), **{name: _f1(truth, d) for name, d in decided.items()},
           "still_images_of_the_same_art": stills, "stills": len(names),
           "by_kind": {kind: {name: _f1(truth[kinds == kind], d[kinds == kind]) for name, d in decided.items()}
                       for kind in KINDS}}
    clip_keys = [k for k in decided if k.startswith("clip_")]  # the poolings the predictor offers
    out["best_pooling"] = max(clip_keys, key=lambda k: out[k]).removeprefix("clip_")
    return out


def _quality_targets(quality: dict) -> dict:
    """The issue's quality targets, for the better pooling."""
    best = quality[f"clip_{quality['best_pooling']}"]
    single = max(quality["first_frame"], quality["middle_frame"])
    return {"clip_at_least_still": {"clip": best, "still": quality["still_images_of_the_same_art"],
                                    "met": best >= quality["still_images_of_the_same_art"]},
            "clip_0.25_above_single_frames": {"clip": best, "best_single_frame": single,
                                              "met": best >= single + 0.25}}


def _truth(label_sets) -> np.ndarray:
    return np.array([[e in labels for e in EMOTIONS] for labels in label_sets], bool)


def _decided(predictor, images) -> np.ndarray:
    """Gives (N, 6) bool: the emotions the predictor's answer names, per image or clip."""
    return _truth([answer["predicted_emotions"] for answer in predictor.predict(list(images), k=0)])


def _f1(truth: np.ndarray, decided: np.ndarray) -> float:
    """Macro-F1 over the emotions present in `truth` (as postset.slice_scores counts it)."""
    from sklearn.metrics import f1_score

    present = truth.any(axis=0)
    return round(float(f1_score(truth[:, present], decided[:, present], average="macro", zero_division=0)), 4)


def _frames(clip) -> list:
    """Gives every frame of a generated clip as an RGB PIL image, in order."""
    from PIL import Image, ImageSequence

    if clip.format == "mp4":
        import av

        with av.open(io.BytesIO(clip.data)) as container:
            return [frame.to_image() for frame in container.decode(video=0)]
    with Image.open(io.BytesIO(clip.data)) as image:
        return [frame.convert("RGB") for frame in ImageSequence.Iterator(image)]


# --- speed --------------------------------------------------------------------------------------------------

def _decoding(clips, min_side: int, rounds: int = 3) -> dict:
    """Gives, per format, clips and frames decoded per second by decode_media as the predictor calls it
    (frames: those it gives back; source frames: the clips' own), the best of `rounds` passes."""
    from emoreact.embed import DEFAULT_MAX_PIXELS
    from emoreact.embed.clips import ClipSettings, decode_media

    settings = ClipSettings()
    out = {}
    for fmt in sorted({c.format for c in clips}, key=FORMATS.index):
        chosen = [c for c in clips if c.format == fmt]
        best, used = float("inf"), 0
        for _ in range(rounds):
            start = time.perf_counter()
            decoded = [decode_media(c.data, DEFAULT_MAX_PIXELS, min_side, settings) for c in chosen]
            best = min(best, time.perf_counter() - start)
            used = sum(getattr(d, "frames_used", 1) for d in decoded)
        source = sum(len(c.frames) for c in chosen)
        out[fmt] = {"clips": len(chosen), "clips_per_s": round(len(chosen) / best, 1),
                    "frames_per_s": round(used / best, 1), "source_frames_per_s": round(source / best, 1),
                    "frames_used_per_clip": round(used / len(chosen), 2)}
    return out


def _api(root: Path, device: str, requests: int, formats: tuple[str, ...]) -> dict:
    """Gives p50/p95 ms of `/api/predict` for an 8-frame GIF, a 10-second MP4 (with the video extra) and a
    still, taking turns in one run through a real server, and the model-only ms per image in the same process."""
    from emoreact.web import WebConfig, create_app

    from .api_bench import alternating

    gifs = [make_clip("stretch", "gif", seed=SEED, number=n, frames=8, side=API_SIDE) for n in range(6)]
    uploads = {"gif_8_frames": [(f"{c.name}.gif", c.data) for c in gifs],
               "still_image": [(f"{c.name}-middle.png", still(c.frames[c.middle_frame], side=API_SIDE)) for c in gifs]}
    if "mp4" in formats:
        seconds, fps = API_MP4
        videos = [make_clip("stretch", "mp4", seed=SEED, number=n, frames=seconds * fps, fps=fps, side=API_SIDE)
                  for n in range(2)]
        uploads["mp4_10_seconds"] = [(f"{c.name}.mp4", c.data) for c in videos]
    app = create_app(WebConfig(store=root / "store", head=root / "head", device=device))
    predictor = app.extensions["emoreact"].predictor
    try:
        timings = alternating(app, uploads, requests)
        model_ms = _model_ms(predictor, uploads["still_image"][0][1])
    finally:
        predictor.close()
    return {**timings, "model_only_ms_per_image": model_ms,
            "uploads": {"side_px": API_SIDE, "mp4_seconds": API_MP4[0], "mp4_fps": API_MP4[1]}}


def _model_ms(predictor, png: bytes) -> float:
    """Gives the median ms of one image's forward pass through the served model (preprocessed beforehand),
    run in a worker thread as the server runs it: on a busy CPU, torch in the main thread can take several
    times longer (its thread team waits on the other processes), which would flatter the target."""
    import torch

    _, image = predictor.decode(png)
    batch = predictor.backbone.transform(image)[None]

    def forward() -> float:
        start = time.perf_counter()
        predictor.backbone.encode_images(batch)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return (time.perf_counter() - start) * 1000

    with ThreadPoolExecutor(1) as worker:
        times = [worker.submit(forward).result() for _ in range(MODEL_RUNS + 3)]  # three warm up
    return round(float(np.median(times[3:])), 2)


def _embed_job(root: Path, clips, backbone, labels) -> dict:
    """Gives the embed job's clips/s over the generated clips, and stills/s over their middle frames as PNGs
    (equal ones stored once), one after the other in this process, each into a fresh store; and how many rows
    each store holds as clips."""
    from emoreact.embed import Record
    from emoreact.index import Store
    from emoreact.pipeline import embed_records

    paths = write_clips(clips, root / "clips")
    still_dir = root / "stills"
    still_dir.mkdir(exist_ok=True)
    still_paths = []
    for clip in clips:  # each clip's middle frame as it decodes (offsets and codecs differ: few are equal)
        path = still_dir / f"{clip.name}.png"
        _frames(clip)[clip.middle_frame].save(path, "PNG")
        still_paths.append(path)
    out = {}
    for kind, files in (("clips", paths), ("stills", still_paths)):
        records = [Record(p, c.labels, "train") for p, c in zip(files, clips)]
        start = time.perf_counter()
        report = embed_records(records, root / f"job-{kind}", backbone, labels, _embed_config())
        seconds = time.perf_counter() - start
        with Store.open(root / f"job-{kind}", with_index=False) as store:
            as_clips = store.clip_count()
        out[kind] = {"added": report.added, "skipped": dict(report.skipped), "stored_as_clips": as_clips,
                     "seconds": round(seconds, 2), "per_s": round(report.added / seconds, 1)}
    return out
