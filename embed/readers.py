"""Readers: each turns a source (folder, manifest, dataset copy) into `Record`s with our labels.

Layouts are those of ../shared/DATASETS.md; label maps come from the label config's
[datasets.*] tables, so a user can remap without code changes.
"""
from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from emoreact.index import SPLITS
from emoreact.labels import ConfigError, LabelConfig
from emoreact.manifests import read_rows

from .texts import clean_caption

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".apng", ".mp4", ".mov", ".webm", ".mkv", ".m4v"}  # clips too
EMOTION6_THRESHOLD = 0.3  # a vote share at or above this makes the emotion one of the image's labels
_EMOTION6_COLUMNS = ("anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral")


class SourceError(ValueError):
    """The source cannot be read as asked; the message names the path and the fix."""


@dataclass(frozen=True)
class Record:
    """One image to embed."""

    path: Path
    labels: tuple[str, ...] | None  # our label names; None when the source has no labels
    split: str | None = None  # train/val/test when the source fixes it
    caption: str | None = None  # the post's caption (a manifest's `caption` column), cleaned by texts.clean_caption


def detect_format(source: Path) -> str:
    """Gives the reader name for a source path, or raises when it is ambiguous or unknown."""
    if source.is_file():
        if source.suffix.lower() in (".csv", ".jsonl"):
            return "manifest"
        raise SourceError(f"{source} is a file but not a .csv or .jsonl manifest")
    if not source.is_dir():
        raise SourceError(f"{source} does not exist; give a folder, a .csv/.jsonl manifest or a dataset copy")
    if (source / "train.json").is_file() and (source / "image").is_dir():
        return "emoset"
    if (source / "ground_truth.txt").is_file():
        return "emotion6"
    if (source / "Manually_Annotated_file_lists").is_dir():
        return "affectnet"
    return "folder"


def read_source(source: str | Path, config: LabelConfig, fmt: str = "auto") -> list[Record]:
    """Gives the records of a source in a stable order (`fmt`: auto or one of READERS), with absolute
    paths, so that the server finds the files from any working folder."""
    source = Path(source).absolute()
    fmt = detect_format(source) if fmt == "auto" else fmt
    if fmt not in READERS:
        raise SourceError(f"unknown --format {fmt!r}; choose auto or one of {sorted(READERS)}")
    if not source.exists():
        raise SourceError(f"{source} does not exist")
    return list(READERS[fmt](source, config))


def source_root(source: str | Path) -> Path:
    """Gives the absolute folder that a source's image paths are relative to: a folder source itself,
    or the folder holding a manifest file. Answers name images relative to it, never by server path."""
    source = Path(source).absolute()
    return source.parent if source.is_file() else source


def _read_folder(root: Path, config: LabelConfig, dataset: str = "mikels") -> Iterator[Record]:
    """One sub-folder per label (our names or the dataset map's), or a flat unlabeled folder."""
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if subdirs and loose:
        log.warning("%s has label sub-folders (%s) but also %d image(s) at its top level (%s), so every image "
                    "is read as UNLABELLED. To keep the labels, move the top-level images into a label "
                    "sub-folder or out of the folder; if the whole folder is meant to be unlabelled, nothing "
                    "needs to change.", root, ", ".join(p.name for p in subdirs[:5]), len(loose),
                    ", ".join(p.name for p in loose[:3]))
    if not subdirs or loose:
        yield from (Record(p, None) for p in _files_under(root))
        return
    for folder in subdirs:
        label = config.map_label(dataset, folder.name.lower(), origin=str(folder))
        if label is None:
            continue
        yield from (Record(p, (label,)) for p in _files_under(folder))


def _read_fi(root: Path, config: LabelConfig) -> Iterator[Record]:
    """FI: `<root>/<mikels emotion>/*.jpg`, no fixed split."""
    if not any(p.is_dir() for p in root.iterdir()):
        raise SourceError(f"{root} has no emotion sub-folders; FI is laid out as <root>/<emotion>/*.jpg")
    yield from _read_folder(root, config, "mikels")


def _read_emoset(root: Path, config: LabelConfig) -> Iterator[Record]:
    """EmoSet-118K: train/val/test.json lists of [emotion, (id,) image_path, annotation_path]."""
    for split in SPLITS:
        split_file = root / f"{split}.json"
        if not split_file.is_file():
            raise SourceError(f"{split_file} is missing; an EmoSet copy has train.json, val.json and test.json")
        try:
            entries = json.loads(split_file.read_text())
        except json.JSONDecodeError as exc:
            raise SourceError(f"{split_file} is not valid JSON: {exc}") from exc
        for number, entry in enumerate(entries):
            if not isinstance(entry, list) or len(entry) not in (3, 4):
                raise SourceError(f"{split_file}, record {number}: expected [emotion, image_path, "
                                  f"annotation_path] or [emotion, id, image_path, annotation_path], got {entry!r}")
            emotion, image_path = entry[0], entry[-2]
            label = config.map_label("mikels", emotion, origin=f"{split_file}, record {number}")
            if label is not None:
                yield Record(root / image_path, (label,), split)


def _read_emotion6(root: Path, config: LabelConfig) -> Iterator[Record]:
    """Emotion6: ground_truth.txt (tab-separated) with per-emotion vote shares -> multi-label."""
    table = root / "ground_truth.txt"
    with table.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    for number, row in enumerate(rows[1:], 2):
        if not row or not row[0].strip():
            continue
        if len(row) < 3 + len(_EMOTION6_COLUMNS):
            raise SourceError(f"{table}, line {number}: expected filename, valence, arousal and "
                              f"{len(_EMOTION6_COLUMNS)} probabilities, got {len(row)} columns")
        shares = dict(zip(_EMOTION6_COLUMNS, (float(v) for v in row[3:3 + len(_EMOTION6_COLUMNS)])))
        chosen = [e for e, s in shares.items() if s >= EMOTION6_THRESHOLD] or [max(shares, key=shares.get)]
        labels = {config.map_label("emotion6", e, origin=f"{table}, line {number}") for e in chosen}
        labels.discard(None)
        name = row[0].strip()
        path = root / "images" / name
        if labels:
            yield Record(path, tuple(l for l in config.names if l in labels))


def _read_affectnet(root: Path, config: LabelConfig) -> Iterator[Record]:
    """AffectNet: Manually_Annotated_file_lists/{training,validation}.csv; validation is our test."""
    images = root / "Manually_Annotated_Images"
    lists = root / "Manually_Annotated_file_lists"
    for name, split in (("training.csv", None), ("validation.csv", "test")):
        path = lists / name
        if not path.is_file():
            raise SourceError(f"{path} is missing; an AffectNet copy has training.csv and validation.csv there")
        with path.open(newline="", encoding="utf-8") as handle:
            for number, row in enumerate(csv.DictReader(handle), 2):
                try:
                    rel, code = row["subDirectory_filePath"], row["expression"]
                except KeyError as exc:
                    raise SourceError(f"{path}: column {exc} is missing") from exc
                label = config.map_label("affectnet", code, origin=f"{path}, line {number}")
                if label is not None:
                    yield Record(images / rel, (label,), split)


def _read_manifest(path: Path, config: LabelConfig) -> Iterator[Record]:
    """CSV (header: path,labels[,split][,caption]) or JSONL ({"path", "labels", "split", "caption"}); paths
    relative to it. A caption is cleaned as `texts.clean_caption` says (an empty one is none)."""
    rows = read_rows(path, SourceError, columns=("path",))
    for number, row in rows:
        where = f"{path}, line {number}"
        if not row.get("path"):
            raise SourceError(f"{where}: no `path`; a manifest row needs path and optionally labels, split")
        labels = _manifest_labels(row.get("labels"), config, where)
        split = (row.get("split") or "").strip() or None
        if split is not None and split not in SPLITS:
            raise SourceError(f"{where}: split {split!r} is not one of {SPLITS}")
        caption = row.get("caption")
        if caption is not None and not isinstance(caption, (str, int, float)):
            raise SourceError(f"{where}: caption must be text, got a {type(caption).__name__}; "
                              "write the caption as a string")
        file = Path(row["path"])
        yield Record(file if file.is_absolute() else path.parent / file, labels, split,
                     clean_caption(caption))


def _manifest_labels(raw: object, config: LabelConfig, where: str) -> tuple[str, ...] | None:
    if raw is None or raw == "":
        return None
    items = raw if isinstance(raw, list) else str(raw).split("|")
    labels = []
    for item in items:
        item = str(item).strip()
        if item not in config.names:
            raise ConfigError(f"{where}: unknown label {item!r}; labels are {config.names} "
                              "(separate several with |)")
        labels.append(item)
    return tuple(l for l in config.names if l in labels)


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


READERS: dict[str, Callable[[Path, LabelConfig], Iterator[Record]]] = {
    "folder": _read_folder,
    "manifest": _read_manifest,
    "fi": _read_fi,
    "emoset": _read_emoset,
    "emotion6": _read_emotion6,
    "affectnet": _read_affectnet,
}
