"""Synthetic images whose labels are learnable from what they show: each label has its own colour
and shape; a two-label image shows both, side by side."""
from __future__ import annotations

import csv
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {
    "happy": (250, 210, 0), "sad": (30, 60, 200), "angry": (220, 20, 20), "fear": (120, 0, 160),
    "surprise": (255, 120, 0), "disgust": (40, 160, 40), "neutral": (128, 128, 128), "other": (0, 200, 200),
}
SHAPES = {"happy": "ellipse", "sad": "rectangle", "angry": "triangle", "fear": "ellipse",
          "surprise": "triangle", "disgust": "rectangle", "neutral": "ellipse", "other": "rectangle"}


def draw(labels: tuple[str, ...], seed: int, size: int = 96) -> Image.Image:
    """Gives an RGB image showing each label's shape in its colour on a noisy background."""
    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), tuple(rng.randint(200, 255) for _ in range(3)))
    pen = ImageDraw.Draw(image)
    for _ in range(6):  # clutter that carries no label
        x, y = rng.randint(0, size), rng.randint(0, size)
        pen.line((x, y, rng.randint(0, size), rng.randint(0, size)), fill=(rng.randint(150, 255),) * 3, width=2)
    width = size // len(labels)
    for slot, label in enumerate(labels):
        left = slot * width + rng.randint(2, 8)
        top = rng.randint(8, 24)
        box = (left, top, left + width - rng.randint(10, 16), top + rng.randint(40, 60))
        colour = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in COLOURS[label])
        if SHAPES[label] == "ellipse":
            pen.ellipse(box, fill=colour)
        elif SHAPES[label] == "rectangle":
            pen.rectangle(box, fill=colour)
        else:
            pen.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=colour)
    return image


def make_labelled_folder(root: Path, labels: list[str], per_label: int, seed: int = 0) -> Path:
    """Writes <root>/<label>/<n>.png images, single-label; gives root."""
    for j, label in enumerate(labels):
        (root / label).mkdir(parents=True, exist_ok=True)
        for n in range(per_label):
            draw((label,), seed * 100_000 + j * 1000 + n).save(root / label / f"{n}.png")
    return root


def make_manifest(root: Path, items: list[tuple[tuple[str, ...], str | None]], seed: int = 0) -> Path:
    """Writes images and a CSV manifest (path,labels,split) for (labels, split) pairs; gives the CSV."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "labels", "split"])
        for n, (labels, split) in enumerate(items):
            name = f"img{n:05d}.jpg"
            draw(labels, seed * 100_000 + n).save(root / name, quality=92)
            writer.writerow([name, "|".join(labels), split or ""])
    return root / "manifest.csv"


# Phrases whose words carry a label, for posts whose emotion is in their caption (random-weight test models
# learn them by heart: each phrase is its own vector).
PHRASES = {
    "happy": ["best day ever", "so happy right now"], "sad": ["we lost him yesterday", "so sad today"],
    "angry": ["i hate this so much", "absolutely furious"], "fear": ["i am so scared", "terrifying night"],
    "surprise": ["did not see that coming", "wait what"], "disgust": ["eww gross", "this is disgusting"],
    "neutral": ["just a tuesday", "a photo"], "other": ["misc stuff", "random post"],
}


def make_post_manifest(root: Path, posts: list[tuple[tuple[str, ...], str | None, tuple[str, ...], str | None]],
                       seed: int = 0, suffix: str = ".csv") -> Path:
    """Writes images and a manifest (path, labels, split, caption) for (picture labels, caption, post labels,
    split) posts: the image shows the picture labels, the post is labelled with the post labels; gives it."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for n, (shown, caption, labels, split) in enumerate(posts):
        name = f"post{n:05d}.png"
        draw(shown, seed * 100_000 + n).save(root / name)
        rows.append({"path": name, "labels": "|".join(labels), "split": split or "", "caption": caption or ""})
    path = root / f"manifest{suffix}"
    if suffix == ".jsonl":
        import json
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["path", "labels", "split", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    return path
