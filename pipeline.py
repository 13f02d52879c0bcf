"""The product's use cases, wiring embed/, index/ and heads/ together; the CLI and the web app call these.

`embed_source`, `train` and `evaluate` are the public API (re-exported by `emoreact`); the rest are
their building blocks. Files, devices and models live here (the edges); the packages underneath stay pure.
"""
from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from emoreact.embed import (DEFAULT_MODEL, Backbone, EmbedConfig, EmbedReport, Engine, ModelSpec, RayConfig,
                            default_pretrained, engine_for, load_backbone, read_source, resolve_device, run_engine,
                            precision_hint, same_model, source_root)
from emoreact.heads import (MIN_POSTS, EmotionHead, HeadConfig, add_text_channel, fit_head, label_text_embeddings,
                            report, write_plots, zero_shot_head)
from emoreact.heads.losses import resolve_task
from emoreact.index import Store, StoreError, atomic_write_text, read_relabel_manifest
from emoreact.labels import LabelConfig, load_label_config
from emoreact.options import with_options
from emoreact.trainset import SplitScores, read_training_data, require_training_images, score_splits

log = logging.getLogger(__name__)


def embed_source(source: str | Path, store: str | Path, model: str | ModelSpec = DEFAULT_MODEL,
                 pretrained: str | None = None, *, labels: str | Path | LabelConfig | None = None,
                 source_format: str = "auto", device: str = "auto", config: EmbedConfig | None = None,
                 engine: str = "local", ray_config: RayConfig | None = None, **options) -> EmbedReport:
    """Embeds a folder, manifest or dataset copy into a store (created, or resumed and grown); gives the report.

    `model` is an open_clip name (or a model-config JSON), `pretrained` its weights (default: the
    model's usual tag). `options` are `EmbedConfig` fields (batch_size=256, workers=16, ...).
    `engine` names one of `emoreact.embed.ENGINES`: local runs here, on `device`, which may list
    several devices ("cuda:0,cuda:1" or "cuda:all"): one process each; ray runs on a Ray cluster
    (`ray_config`: address, workers, GPUs per worker), `device` being the workers' (auto, cpu or
    cuda). Same store either way.
    """
    # At once: an unknown engine or a missing extra fails before the source is read and a model loaded.
    runner = engine_for(engine, device, ray_config)
    config = with_options(config or EmbedConfig(), options)
    spec = model if isinstance(model, ModelSpec) else ModelSpec(model, pretrained or default_pretrained(model))
    if (config.runtime, config.precision) != (EmbedConfig.runtime, EmbedConfig.precision):
        spec = replace(spec, runtime=config.runtime, precision=config.precision)
    label_config = _label_config(labels)
    records = read_source(source, label_config, source_format)
    return embed_records(records, store, runner.backbone(spec), label_config, config,
                         source_root=source_root(source), engine=runner)


def train(store: str | Path, out: str | Path, head: str = "linear", *,
          labels: str | Path | LabelConfig | None = None, device: str = "auto", pretrained: str | None = None,
          config: HeadConfig | None = None, overrides: dict[int, tuple[str, ...]] | None = None,
          **options) -> dict:
    """Trains a head on a store's train split, tunes it on val, saves it to `out`; gives the test metrics.

    `head` is linear, mlp or zeroshot; `options` are `HeadConfig` fields (loss="focal", epochs=100,
    zero_shot_prior=True, ...). Writes metrics JSON and plots beside the head. `overrides` (image id ->
    labels, e.g. `emoreact.index.feedback.label_overrides(store)`) replace those images' stored labels.
    """
    config = with_options(config or HeadConfig(kind=head), {"kind": head, **options})
    _, metrics = train_from_store(store, out, config, _label_config(labels), device, pretrained, overrides)
    return metrics


def evaluate(store: str | Path, head: str | Path, split: str | None = None, out: str | Path | None = None) -> dict:
    """Evaluates a saved head on a store split (default: test, or val with a note when the store has no
    test images); gives the metrics and writes them (JSON, plots) to `out` (default: the head's folder)."""
    return evaluate_head(store, head, split, out)


def relabel(store: str | Path, manifest: str | Path, *, wait: bool = False) -> dict:
    """Sets stored images' labels (and splits, where given) from a manifest, nothing re-embedded; gives
    {"changed", "unchanged", "unknown"} counts of its rows.

    The manifest is CSV or JSONL naming each image by `path` or `sha256`, with `labels` and an optional
    `split` (see `emoreact.index.read_relabel_manifest`). It runs as one transaction under the store's
    write lock (`wait`: wait for another writer instead of failing); a bad label changes nothing.
    """
    entries = read_relabel_manifest(manifest)
    with Store.open_for_writing(store, wait) as writable:
        return writable.relabel(entries)


def _label_config(labels: str | Path | LabelConfig | None) -> LabelConfig:
    return labels if isinstance(labels, LabelConfig) else load_label_config(labels)


def embed_records(records: list, store_path: str | Path, backbone: Backbone, labels: LabelConfig,
                  config: EmbedConfig = EmbedConfig(), *, source_root: Path | None = None,
                  engine: Engine | None = None) -> EmbedReport:
    """Embeds records into a store (created or resumed) with `engine` (default: this process, on the
    backbone's device); writes STORE/report.json. `source_root` is the folder the records' paths are
    relative to, kept in the manifest."""
    with _writable_store(store_path, backbone, labels, config.wait) as store:
        _remember_source(store, source_root)
        report_ = run_engine(engine or engine_for("local", str(backbone.device)), records, store, backbone, config)
        _write_report(store, report_)
    return report_


def _writable_store(store_path: str | Path, backbone: Backbone, labels: LabelConfig, wait: bool = False) -> Store:
    spec = backbone.spec
    return Store.create_or_resume(store_path, spec.model_id, backbone.dim,
                                  {**backbone.preprocess.to_json(), "model": spec.model, "pretrained": spec.pretrained},
                                  labels.names, wait=wait)


def _remember_source(store: Store, root: Path | None) -> None:
    """Adds a source root to the manifest that the job's `finish()` writes: answers name an image by
    its path relative to the root it was embedded from, never by its path on the server."""
    if root is not None:
        roots = [r for r in store.manifest.get("source_roots", []) if r != str(root)]
        store.manifest = {**store.manifest, "source_roots": [*roots, str(root)]}


def _write_report(store: Store, report_: EmbedReport) -> None:
    skipped = [{"path": p, "reason": r} for p, r in store.skipped()]
    atomic_write_text(store.root / "report.json", json.dumps({**report_.to_json(), "skipped_files": skipped},
                                                             indent=2, ensure_ascii=False) + "\n")


def backbone_for_store(store: Store, device: str = "auto", pretrained: str | None = None,
                       runtime: str | None = None, precision: str | None = None) -> Backbone:
    """Gives the backbone a store was built with (its weights may be re-pointed by `pretrained`); `runtime`
    and `precision` (torch/onnx, fp32/int8) default to the store's: a precision other than its own is refused."""
    pre = store.manifest.get("preprocess", {})
    parsed = ModelSpec.parse(store.model_id)
    spec = ModelSpec(model=pre.get("model") or parsed.model,
                     pretrained=pretrained or pre.get("pretrained") or parsed.pretrained,
                     runtime=runtime or parsed.runtime, precision=precision or parsed.precision)
    backbone = load_backbone(spec, device)
    if not same_model(store.model_id, backbone.spec):
        raise StoreError(f"store {store.root} was built with {store.model_id!r} but the weights given make "
                         f"{backbone.spec.model_id!r}"
                         + (precision_hint(store.model_id, backbone.spec) or "; pass the same --pretrained as at embed time"))
    return backbone


def train_from_store(store_path: str | Path, out: str | Path, config: HeadConfig, labels: LabelConfig,
                     device: str = "auto", pretrained: str | None = None,
                     overrides: dict[int, tuple[str, ...]] | None = None) -> tuple[EmotionHead, dict]:
    """Trains a head on a store's train split, tunes on val, evaluates on test; saves head + report.
    `overrides`: image id -> labels that replace the stored ones (the report counts those that changed).

    The store is read in blocks, never whole, and its index is not loaded: see `emoreact.trainset`
    for the sample of at most `config.max_train_rows` training images that the head is fitted on.
    """
    with Store.open(store_path, with_index=False) as store:
        return _train_on(store, Path(out), config, labels, device, pretrained, overrides)


def _train_on(store: Store, out: Path, config: HeadConfig, labels: LabelConfig, device: str,
              pretrained: str | None, overrides: dict | None) -> tuple[EmotionHead, dict]:
    data = read_training_data(store, labels.names, max_train_rows=config.max_train_rows,
                              max_val_rows=config.max_val_rows, seed=config.seed, overrides=overrides)
    dev = str(resolve_device(device))  # cuda:1 trains on cuda:1; an unavailable device is a clear error
    x_val, y_val = data.x_val, data.y_val
    trained = config.learns_from_labels  # a zero-shot head reads only text prompts
    if len(x_val) == 0 and trained:
        log.warning("the store has no labelled validation images; tuning on the training split")
        x_val, y_val = data.x_train, data.y_train
    if config.task == "auto" and data.multi and not data.y_train.sum(axis=1).max(initial=0) > 1:
        config = replace(config, task="multi")  # the sample left out every multi-label image; the store has some
    history: list[dict] = []
    text, scale = None, 100.0
    if config.zero_shot_prior or not trained:
        backbone = backbone_for_store(store, device, pretrained)
        text = label_text_embeddings(lambda p: backbone.encode_texts(p).cpu().numpy(), labels)
        scale = float(backbone.model.logit_scale.detach().exp()) if hasattr(backbone.model, "logit_scale") else 100.0
    if not trained:
        head = zero_shot_head(labels, store.model_id, text, scale, x_val if len(x_val) else None, y_val)
    else:
        require_training_images(store, data)
        posts = config.inputs == "auto" and store.text_count() > 0
        t_train = data.text(store, "train") if posts else None
        t_val = (data.text(store, "val") if len(data.x_val) else t_train) if posts else None
        if posts:  # the task of the posts, not of the pictures alone (a picture shows one emotion, a post two)
            config = replace(config, task=resolve_task(config.task, data.y_train, y_val))
        x_img, y_img, xv_img, yv_img = _picture_rows(data.x_train, data.y_train, x_val, y_val, t_train, t_val)
        # copy=False: the training sample is standardised in place, not copied (it is not used again).
        head, history = fit_head(config, labels, store.model_id, x_img, y_img, xv_img, yv_img,
                                 text=text, logit_scale=scale, device=dev, moments=data.moments, copy=False)
        if posts:
            # x_val is read raw: fit_head standardises x_train in place only when x_val is other memory.
            add_text_channel(head, t_train, data.y_train, x_val, t_val, y_val, text, scale, dev)
    del x_val, y_val
    pre = store.manifest.get("preprocess", {})
    head.backbone = {"model": pre.get("model"), "pretrained": pre.get("pretrained")} if pre.get("model") else None
    head.save(out)
    split = "test" if data.labelled["test"] else "val"
    extra = {**data.rows_note(), **({"feedback_overrides": data.overridden} if overrides else {})}
    del data  # the training sample: evaluation reads the store again, block by block
    scores = score_splits(store, head, (split,), overrides=overrides)[split]
    return head, _evaluate(head, scores, split, out, history, _note_for(split), extra)


def _picture_rows(x_train, y_train, x_val, y_val, t_train, t_val) -> tuple:
    """Gives the (x_train, y_train, x_val, y_val) the image head learns from. A post's label may come from its
    words (a neutral picture captioned "so sad" is sad), so with posts in the store the image head learns from
    the posts without words, whose labels can only come from the picture, when each split has MIN_POSTS of
    them; otherwise, and always for a store without words, from every image."""
    if t_train is None:
        return x_train, y_train, x_val, y_val
    plain, plain_val = ~np.any(t_train != 0, axis=1), ~np.any(t_val != 0, axis=1)
    if plain.sum() < MIN_POSTS or len(np.unique(y_train[plain], axis=0)) < 2:
        return x_train, y_train, x_val, y_val
    if plain_val.sum() >= MIN_POSTS:
        x_val, y_val = x_val[plain_val], y_val[plain_val]
    return x_train[plain], y_train[plain], x_val, y_val


def evaluate_head(store_path: str | Path, head_path: str | Path, split: str | None = None,
                  out: str | Path | None = None) -> dict:
    """Evaluates a saved head on a store split (None: test, or val when there is no test split);
    writes metrics JSON and plots into `out` (or the head). Reads the store block by block."""
    if split is not None and split not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r}; choose train, val or test")
    with Store.open(store_path, with_index=False) as store:
        head = EmotionHead.load(head_path, store.model_id, store.dim)
        scores = score_splits(store, head, ("val", "test") if split is None else (split,))
    note = None
    if split is None:
        split = "test" if len(scores["test"].targets) or not len(scores["val"].targets) else "val"
        note = _note_for(split)
    if len(scores[split].targets) == 0:
        raise StoreError(f"store {store_path} has no labelled images in split {split!r}")
    return _evaluate(head, scores[split], split, Path(out or head_path), None, note)


def _note_for(split: str) -> str | None:
    """Gives the caveat for metrics measured on `split` in place of test, or None for test itself."""
    if split == "test":
        return None
    return (f"the store has no labelled test images, so these metrics are on the {split} split, which also "
            "chose the thresholds and the stopping epoch: expect them to be optimistic; embed a source with "
            "a test split for an unbiased figure")


def _evaluate(head: EmotionHead, scores: SplitScores, split: str, out: Path,
              history: list[dict] | None, note: str | None = None, extra: dict | None = None) -> dict:
    caveat = {"split_note": note} if note else {}  # "note" is taken: the report explains its averages there
    caveat.update(extra or {})
    probs, y = scores.probs, scores.targets
    if len(y) == 0:
        return {"split": split, "count": 0, **caveat}
    metrics = {"split": split, **caveat, "model_id": head.model_id, "head": head.config.kind,
               "alpha": head.alpha_, "temperature": [round(float(t), 4) for t in head.temperature_],
               **report(probs, y, head.thresholds_, head.labels, head.task_, scores.uncalibrated, head.fallback_,
                        scores.chosen), "inputs": head.inputs}
    plots = write_plots(out, head.labels, metrics, probs, y, history)
    metrics["plots"] = [p.name for p in plots]
    if history:
        # MLP: epochs of the chosen width/dropout; linear: L2 strengths on the path.
        metrics["epochs" if "epoch" in history[0] else "l2_strengths_tried"] = len(history)
        atomic_write_text(out / "history.json", json.dumps(history, indent=1) + "\n")
    atomic_write_text(out / f"metrics_{split}.json", json.dumps(metrics, indent=2) + "\n")
    return metrics
