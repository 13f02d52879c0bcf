"""What the emoji CLIP's training and evaluation scripts share: paths, the held-out rule, the demo set
and the cross-style probe. Both scripts import this module; neither imports the other's internals.
"""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
MODEL_NAME = "emoreact-emoji-s"
CONFIG_PATH = REPO / "embed" / "model_configs" / f"{MODEL_NAME}.json"
HELDOUT_MOD = 10  # 1 emoji in 10 held out
# open_clip's default (OpenAI CLIP) normalisation; open_clip ignores a preprocess_cfg in a
# plain model-config JSON, so the bundled model uses these defaults at inference time too.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEMO_LABELS = ("happy", "sad", "angry", "fear", "surprise", "disgust", "neutral", "other")
DEMO_PROMPT_WORDS = {"happy": "happy", "sad": "sad", "angry": "angry", "fear": "afraid",
                     "surprise": "surprised", "disgust": "disgusted", "neutral": "neutral"}


def is_heldout(hexcode: str) -> bool:
    """Tells whether an emoji is in the fixed held-out set (about 10% of hexcodes)."""
    return int(hashlib.sha256(hexcode.encode()).hexdigest(), 16) % HELDOUT_MOD == 0


STYLES = ("google", "twitter", "openmoji")


def load_corpus(data: Path) -> list[dict]:
    rows = [json.loads(line) for line in (data / "captions.jsonl").read_text().splitlines() if line.strip()]
    rows.sort(key=lambda r: (r["style"], r["hexcode"]))  # independent of file order
    return rows


@torch.inference_mode()
def encode_images(model, transform, paths: list[Path], batch: int = 256) -> torch.Tensor:
    out = []
    for i in range(0, len(paths), batch):
        ims = []
        for p in paths[i:i + batch]:
            with Image.open(p) as im:
                ims.append(transform(im.convert("RGB")))
        out.append(torch.nn.functional.normalize(model.encode_image(torch.stack(ims)), dim=-1))
    return torch.cat(out)


def cross_style_eval(img: torch.Tensor, items: list[dict]) -> dict:
    """Leave-one-style-out nearest neighbour on the demo set: how style-invariant the features are.

    For each style, every image's nearest neighbour among the other two styles' images: how often it
    is the same emoji, and the macro-F1 of the 8 demo labels when each image takes its neighbour's
    labels. This is what the demo's leave-one-style-out head needs from the features.
    """
    from sklearn.metrics import f1_score

    styles = np.array([it["style"] for it in items])
    emoji = np.array([Path(it["path"]).stem for it in items])
    y = np.array([[lab in it["labels"].split("|") for lab in DEMO_LABELS] for it in items])
    sims = (img @ img.T).numpy()
    res = {}
    for held in STYLES:
        test, pool = np.flatnonzero(styles == held), np.flatnonzero(styles != held)
        nn = pool[sims[np.ix_(test, pool)].argmax(1)]
        res[held] = {"same_emoji": round(float((emoji[nn] == emoji[test]).mean()), 4),
                     "label_macro_f1": round(float(f1_score(y[test], y[nn], average="macro", zero_division=0)), 4)}
    res["mean_same_emoji"] = round(float(np.mean([res[s]["same_emoji"] for s in STYLES])), 4)
    res["mean_label_macro_f1"] = round(float(np.mean([res[s]["label_macro_f1"] for s in STYLES])), 4)
    return res


def demo_items(demo: Path) -> list[dict]:
    with open(demo / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))
