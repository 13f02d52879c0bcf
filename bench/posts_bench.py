"""`bench posts`: how well posts are judged when their emotion is in the picture, the caption, the drawn words
or both; how well and how fast OCR reads memes; what a meme costs the API beside a plain image.

The post set comes from emoreact/postset.py: training posts from two of the demo's art styles and the
training phrases, test posts from the third style and the test phrases (disjoint lists). Both go into
one store with the demo's own drawings of the two training styles, embedded with the bundled emoji CLIP
(or `--model`) with OCR on; an image-only head and a post head are trained on the training posts and
drawings, and each is scored per slice of the test posts.
"""
from __future__ import annotations

import csv
import tempfile
import time
from pathlib import Path

from emoreact.postset import known_words, load_phrases, make_posts, measure_ocr, slice_scores

from .common import environment

VAL_EVERY = 4  # every 4th training post is a validation post (the post head's fusion is fitted on them)


def run(model: str = "emoreact-emoji-s", pretrained: str | None = None, per_slice: int = 60, device: str = "cpu",
        api_requests: int = 40, keep: str | Path | None = None) -> dict:
    """Gives per-slice macro-F1 of the image-only and the post head, OCR accuracy and timings, and the API's
    p50/p95 for a meme with OCR on beside a plain image (same run)."""
    import torch

    from emoreact import embed_source, train
    from emoreact.embed import ModelSpec, default_pretrained, ocr_reader

    reader = ocr_reader("on")  # the bench measures OCR: without the extra it stops here, naming it
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(keep) if keep else Path(tmp)
        train_rows = make_posts(root / "train", seed=1, per_slice=per_slice, phrases="train")
        test_rows = make_posts(root / "test", seed=2, per_slice=per_slice, phrases="test")
        manifest = _manifest(root, train_rows, test_rows)
        spec = ModelSpec(model, pretrained or default_pretrained(model))
        started = time.perf_counter()
        embed_source(manifest, root / "store", spec, device=device, ocr="on", workers=0, progress=False,
                     near_duplicate_threshold=None)
        embed_s = time.perf_counter() - started
        heads = {"image_only": train(root / "store", root / "image-head", device=device, inputs="image"),
                 "post": train(root / "store", root / "post-head", device=device)}
        slices = _per_slice(root, test_rows)
        ocr = measure_ocr(test_rows, root / "test", reader)
        api = _api(root, test_rows, device, api_requests)
        words = known_words([p for phrases in load_phrases("test").values() for p in phrases])
    return {"bench": "posts", **environment(torch.device(device)), "model": spec.model_id,
            "posts": {"train": len(train_rows), "test": len(test_rows), "per_slice": per_slice},
            "embed_seconds_with_ocr": round(embed_s, 1),
            "inputs": {name: metrics["inputs"] for name, metrics in heads.items()},
            "macro_f1_by_slice": slices, "ocr": ocr, "api": api,
            "test_words_the_text_tower_knows": {"known": len(words["known"]), "unknown": len(words["unknown"]),
                                                "known_words": words["known"]}}


def _manifest(root: Path, train_rows: list[dict], test_rows: list[dict]) -> Path:
    """Writes one manifest of both post sets (paths relative to it) with train/val/test splits, and the demo's
    own drawings of the training posts' styles as pictures without words (what an image head learns from);
    gives it."""
    from emoreact.demo import DEMO_DIR
    from emoreact.postset import STYLES

    path = root / "posts.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["path", "labels", "split", "caption"], lineterminator="\n")
        writer.writeheader()
        with (DEMO_DIR / "manifest.csv").open(newline="", encoding="utf-8") as demo:
            drawings = [row for row in csv.DictReader(demo) if row["style"] in STYLES["train"]]
        for n, row in enumerate(drawings):
            writer.writerow({"path": str(DEMO_DIR / row["path"]), "labels": row["labels"], "caption": "",
                             "split": "val" if n % VAL_EVERY == VAL_EVERY - 1 else "train"})
        for n, row in enumerate(train_rows):
            writer.writerow({"path": f"train/{row['path']}", "labels": row["labels"], "caption": row["caption"],
                             "split": "val" if n % VAL_EVERY == VAL_EVERY - 1 else "train"})
        for row in test_rows:
            writer.writerow({"path": f"test/{row['path']}", "labels": row["labels"], "caption": row["caption"],
                             "split": "test"})
    return path


def _per_slice(root: Path, test_rows: list[dict]) -> dict:
    """Gives {slice: {"image_only", "post", "post_minus_image_only"}} macro-F1 on the test posts."""
    from emoreact.heads import EmotionHead
    from emoreact.index import Store

    with Store.open(root / "store", with_index=False) as store:
        return slice_scores(store, {"image_only": EmotionHead.load(root / "image-head"),
                                    "post": EmotionHead.load(root / "post-head")}, test_rows, root / "test")


def _api(root: Path, test_rows: list[dict], device: str, requests: int) -> dict:
    """Gives p50/p95 ms of `/api/predict` (one upload, k=5, through waitress) for memes with drawn words and
    OCR on, beside pictures without words, alternating in the same run."""
    from emoreact.web import WebConfig, create_app

    from .api_bench import alternating

    memes = [(Path(row["path"]).name, (root / "test" / row["path"]).read_bytes())
             for row in test_rows if row["slice"] == "drawn"]
    plain = [(Path(row["path"]).name, (root / "test" / row["path"]).read_bytes())
             for row in test_rows if row["slice"] == "picture"]
    app = create_app(WebConfig(store=root / "store", head=root / "post-head", device=device, ocr="on"))
    try:
        return alternating(app, {"meme_with_ocr": memes, "plain_image": plain}, requests, warmup=4)
    finally:
        app.extensions["emoreact"].predictor.close()
