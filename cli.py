"""EmoReact command line: each command is a thin wrapper over the public Python API."""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import platform
import sys
from pathlib import Path

if not __package__:  # `python cli.py` in a checkout: the checkout itself is the emoreact package
    import importlib.util

    _spec = importlib.util.spec_from_file_location("emoreact", Path(__file__).resolve().with_name("__init__.py"),
                                                   submodule_search_locations=[str(Path(__file__).resolve().parent)])
    sys.modules["emoreact"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["emoreact"])

import click  # noqa: E402

import emoreact  # noqa: E402
from emoreact.embed import DEFAULT_MODEL, DEFAULT_PRETRAINED, PRECISIONS, RUNTIMES  # noqa: E402
from emoreact.embed.config import OCR_MODES, EmbedConfig  # noqa: E402
from emoreact.embed.engines import ENGINES  # noqa: E402 - the names only: an engine loads when it runs
from emoreact.heads.config import INPUTS, KINDS, LOSSES, SCHEDULES, TASKS, HeadConfig  # noqa: E402
from emoreact.heads.frames import POOLINGS  # noqa: E402
from emoreact.labels import load_label_config  # noqa: E402
from emoreact.predictor_config import PredictorConfig  # noqa: E402
from emoreact.web.config import MiB, WebConfig  # noqa: E402

# Each command imports what it needs (torch, faiss, open_clip ...) when it runs, so that `--help` and
# a mistyped option answer at once.


def _user_errors() -> tuple[type[Exception], ...]:
    """The library's expected errors: each message names the problem and the fix."""
    from emoreact import ConfigError, HeadError, ImageError, ModelLoadError, SourceError, StoreError
    from emoreact.rayutil import EngineError

    return (ModelLoadError, StoreError, HeadError, ConfigError, SourceError, ImageError, EngineError,
            ValueError, KeyError, FileNotFoundError)


def _friendly(command):
    """Turns the library's expected errors into one clear line and exit status 1, not a traceback."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except Exception as exc:
            if not isinstance(exc, _user_errors()):
                raise
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            raise click.ClickException(str(message)) from exc
    return wrapper


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
def main(verbose: bool) -> None:
    """EmoReact: emotions and emoji reactions for images, from frozen CLIP features."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


_model_options = [
    click.option("--model", default=DEFAULT_MODEL, show_default=True,
                 help="open_clip model name (ViT-B-32, ViT-L-14, ...) or a model-config JSON path."),
    click.option("--pretrained", default=None,
                 help="open_clip pretrained tag, local weights file/folder, 'emoreact' (bundled) or 'none' "
                      f"(random, seeded). Default: bundled weights, else {DEFAULT_PRETRAINED} for {DEFAULT_MODEL}."),
    click.option("--device", default="auto", show_default=True,
                 help="auto, cpu, cuda[:N]; for embed also a comma-separated list or cuda:all "
                      "(one process per device, same store as one process)."),
]
_labels_option = click.option("--labels", "labels_path", type=click.Path(dir_okay=False),
                              help="Label config TOML (labels, prompts, emoji policy); default: bundled.")


def _setting(config: type, name: str, *decls: str, **options):
    """Gives the option for field `name` of the config dataclass `config`: the command receives it under the
    field's name, and its default is the field's (each default is written once, in the config)."""
    return click.option(*decls, name, default=_default(config, name), **options)


def _default(config: type, name: str):
    field = next((f for f in dataclasses.fields(config) if f.name == name), None)
    if field is None or field.default is dataclasses.MISSING:
        raise TypeError(f"{config.__name__} has no field {name!r} with a default")
    return field.default


def _runtime_options(config: type) -> list:
    """Gives --runtime and --precision, the fields of that name of `config` (docs/performance.md: the CPU)."""
    return [_setting(config, "runtime", "--runtime", show_default=True, type=click.Choice(RUNTIMES),
                     help="What runs the model: torch, or onnx (ONNX Runtime on the CPU, pip install "
                          "\"emoreact[onnx]\"; the same vectors, faster on a CPU)."),
            _setting(config, "precision", "--precision", show_default=True, type=click.Choice(PRECISIONS),
                     help="fp32, or int8 with --runtime onnx (faster still; its vectors get their own model id, "
                          "so a store embedded at int8 is served at int8).")]


def _clip_options(config: type) -> list:
    """Gives --max-frames and --clip-seconds (and, where answers are made, --clip-pooling): how clips
    (animated GIF/WebP/PNG, video with the `video` extra) are read; embed/clips.py, heads/frames.py."""
    options = [_setting(config, "max_frames", "--max-frames", show_default=True, type=click.IntRange(1),
                        help="A clip is judged by at most this many frames, spread over its length."),
               _setting(config, "clip_seconds", "--clip-seconds", show_default=True,
                        type=click.FloatRange(min=0, min_open=True),
                        help="Decoding one clip stops after this long; the frames decoded so far are used "
                             "(the answer says `truncated`).")]
    if any(f.name == "clip_pooling" for f in dataclasses.fields(config)):
        options.append(_setting(config, "clip_pooling", "--clip-pooling", show_default=True,
                                type=click.Choice(POOLINGS),
                                help="A clip's scores from its frames': share, each label's score held for "
                                     "30% of the clip's time (a label shown that long is predicted); scores, "
                                     "their mean over time; features, the score of the frames' mean vector."))
    return options


def _with(options):
    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


@main.command()
def info() -> None:
    """Print versions, device, CUDA/bf16 support, FAISS build and available models."""
    import faiss
    import open_clip
    import torch

    from emoreact.embed import available_models

    cuda = torch.cuda.is_available()
    data = {
        "python": platform.python_version(), "torch": torch.__version__, "open_clip": open_clip.__version__,
        "faiss": faiss.__version__, "faiss_gpus": faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0,
        "cuda": cuda, "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "bf16": bool(cuda and torch.cuda.is_bf16_supported()), "cpu_threads": torch.get_num_threads(),
        "default_model": f"{DEFAULT_MODEL}/{DEFAULT_PRETRAINED}",
        "models": available_models(),
    }
    click.echo(json.dumps(data, indent=2))


@main.command()
@click.argument("source", type=click.Path(exists=True))
@click.option("--store", "store_path", required=True, type=click.Path(file_okay=False), help="Store folder.")
@_with(_model_options)
@click.option("--format", "fmt", default="auto", show_default=True,
              type=click.Choice(["auto", "folder", "manifest", "fi", "emoset", "emotion6", "affectnet"]))
@_setting(EmbedConfig, "batch_size", "--batch-size", show_default=True, type=click.IntRange(1))
@click.option("--workers", default=None, type=click.IntRange(0),
              help=f"local: decoding processes (default {_default(EmbedConfig, 'workers')}); "
                   "ray: model workers (default one per GPU, "
                   "or all CPUs but one).")
@click.option("--engine", default="local", show_default=True, type=click.Choice(list(ENGINES)),
              help="local: this machine's processes; ray: a Ray cluster (pip install \"emoreact[ray]\").")
@click.option("--ray-address", default=None, help="ray: the cluster to join (auto: the one `ray start` began); "
                                                   "default: RAY_ADDRESS, else a local Ray of its own.")
@click.option("--gpus-per-worker", default=None, type=click.FloatRange(0),
              help="ray: GPUs each model worker holds; 0 for CPU workers (default: 1 on a cluster with GPUs).")
@_setting(EmbedConfig, "shard_size", "--shard-size", show_default=True, type=click.IntRange(1))
@click.option("--index", "index_kind", default=None, metavar="auto|flat|ivf|FACTORY",
              help="Index kind: auto (exact up to 200k images, then IVF-HNSW with RaBitQ codes and exact re-ranking), flat, "
                   "ivf, or a FAISS factory string. Default: the store's earlier choice, else auto.")
@click.option("--allow-readd", is_flag=True, help="Embed files whose content was removed (`remove`) again.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.option("--wait", is_flag=True, help="If another job is writing the store, wait for it instead of failing.")
@_setting(EmbedConfig, "ocr", "--ocr", show_default=True, type=click.Choice(OCR_MODES),
          help="Read the words in each image (pip install \"emoreact[ocr]\"): on; auto, when the extra is "
               "installed; off. Words (and a manifest's caption column) are stored as text vectors.")
@click.option("--backfill", is_flag=True, help="Bring stored images up to date, nothing else added: animations "
                                                "stored by their first frame (EmoReact 0.3) are re-embedded as clips "
                                                "in place; images without words get captions from SOURCE's caption "
                                                "column and, with --ocr on, the text read in their files.")
@click.option("--near-duplicate-threshold", default=str(_default(EmbedConfig, "near_duplicate_threshold")),
              show_default=True,
              callback=lambda ctx, param, value: _threshold_or_off(value), metavar="COSINE|off",
              help="Images at least this similar go to one split, unless the source fixed their split; "
                   "off keeps every split as the content hash gave it.")
@_with(_runtime_options(EmbedConfig))
@_with(_clip_options(EmbedConfig))
@_labels_option
@_friendly
def embed(source, store_path, model, pretrained, device, fmt, batch_size, workers, engine, ray_address,
          gpus_per_worker, shard_size, index_kind, allow_readd, no_progress, wait, ocr, backfill,
          near_duplicate_threshold, runtime, precision, max_frames, clip_seconds, labels_path) -> None:
    """Embed images from SOURCE (folder, CSV/JSONL manifest with path, labels, split, caption columns,
    FI/EmoSet/Emotion6/AffectNet) into a store."""
    from emoreact.rayutil import RayConfig

    if backfill:
        from emoreact.backfill import backfill as run_backfill
        from emoreact.labels import load_label_config

        report = run_backfill(source, store_path, load_label_config(labels_path), ocr=ocr, device=device,
                              pretrained=pretrained, wait=wait, progress=not no_progress,
                              clips=EmbedConfig(max_frames=max_frames, clip_seconds=clip_seconds).clips())
        click.echo(json.dumps({**report, "store": str(store_path)}))
        return
    ray_config = RayConfig(address=ray_address, workers=workers or None, gpus_per_worker=gpus_per_worker)
    report = emoreact.embed_source(source, store_path, model, pretrained, labels=labels_path, source_format=fmt,
                                   device=device, batch_size=batch_size,
                                   **({} if workers is None or engine == "ray" else {"workers": workers}),
                                   shard_size=shard_size, progress=not no_progress, wait=wait,
                                   index=_index_choice(index_kind), allow_readd=allow_readd,
                                   near_duplicate_threshold=near_duplicate_threshold, engine=engine,
                                   ray_config=ray_config, ocr=ocr, runtime=runtime, precision=precision,
                                   max_frames=max_frames, clip_seconds=clip_seconds)
    click.echo(json.dumps({**report.to_json(), "store": str(store_path)}, ensure_ascii=False))


@main.command()
@click.option("--store", "store_path", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the trained head.")
@_setting(HeadConfig, "kind", "--head", show_default=True, type=click.Choice(list(KINDS)))
@_setting(HeadConfig, "task", "--task", show_default=True, type=click.Choice(TASKS),
          help="single: softmax + cross-entropy, one top label per image; multi: sigmoid per label; "
               "auto: single when every labelled image has exactly one label.")
@_setting(HeadConfig, "loss", "--loss", show_default=True, type=click.Choice(LOSSES),
          help="For a single-label head: cross-entropy, class-weighted unless bce.")
@click.option("--no-search", is_flag=True, help="Skip the validation search of the L2 strength (linear) or "
                                                 "width/dropout (MLP); use the defaults.")
@_setting(HeadConfig, "zero_shot_prior", "--zero-shot-prior", is_flag=True,
          help="Initialise, regularise and blend with CLIP text prompts.")
@_setting(HeadConfig, "epochs", "--epochs", show_default=True, type=click.IntRange(1))
@_setting(HeadConfig, "patience", "--patience", show_default=True, type=click.IntRange(1))
@_setting(HeadConfig, "lr", "--lr", show_default=True, type=click.FloatRange(min=0, min_open=True))
@_setting(HeadConfig, "schedule", "--schedule", show_default=True, type=click.Choice(SCHEDULES))
@_setting(HeadConfig, "seed", "--seed", show_default=True, type=int)
@click.option("--device", default="auto", show_default=True)
@click.option("--pretrained", default=None, help="Weights of the store's model, if moved since embedding.")
@_setting(HeadConfig, "inputs", "--inputs", show_default=True, type=click.Choice(INPUTS),
          help="auto: a post head reading the picture and the words (caption, text in the image) when the store "
               "holds enough posts with words, else image only; image: image only.")
@_setting(HeadConfig, "max_train_rows", "--max-train-rows", show_default=True, type=click.IntRange(0),
          help="Most labelled training images the head is fitted on; past it each label keeps a seeded "
               "sample (the store is read in blocks, so memory is bounded by this). 0 keeps them all.")
@click.option("--no-feedback", is_flag=True, help="Ignore the moderators' corrections (STORE/feedback.sqlite); "
                                                   "by default each corrected image trains with its corrected labels.")
@_labels_option
@_friendly
def train(store_path, out, no_search, device, pretrained, no_feedback, labels_path, **settings) -> None:
    """Train an emotion head on a store; writes weights, thresholds, metrics JSON and plots to OUT."""
    from emoreact.index.feedback import label_overrides

    overrides = None if no_feedback else label_overrides(store_path)
    settings["max_train_rows"] = settings["max_train_rows"] or None  # 0: no cap
    metrics = emoreact.train(store_path, out, settings.pop("kind"), labels=labels_path, device=device,
                             pretrained=pretrained, search=not no_search, overrides=overrides or None, **settings)
    click.echo(json.dumps({**_summary(metrics, out), "feedback_overrides": metrics.get("feedback_overrides", 0)}))


@main.group()
def feedback() -> None:
    """The moderators' corrections stored beside a store (STORE/feedback.sqlite)."""


@feedback.command("export")
@click.option("--store", "store_path", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Manifest file (.csv or .jsonl); default: CSV on standard output.")
@_friendly
def feedback_export(store_path, out) -> None:
    """Write the latest correction of each image as a manifest (path,labels,split,sha256) that `embed` reads."""
    from emoreact.index.feedback import export_manifest

    fmt = "jsonl" if out and out.lower().endswith(".jsonl") else "csv"
    if out and not out.lower().endswith((".csv", ".jsonl")):
        raise click.BadParameter(f"{out!r} must end in .csv or .jsonl", param_hint="--out")
    text, rows = export_manifest(store_path, fmt)
    if out is None:
        click.echo(text, nl=False)
        return
    from emoreact.index import atomic_write_text

    atomic_write_text(Path(out), text)
    click.echo(json.dumps({"rows": rows, "manifest": out}), err=True)


@main.command()
@click.option("--store", "store_path", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--head", "head_path", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--split", default=None, type=click.Choice(["train", "val", "test"]),
              help="Default: test, or val (said so in the output) when the store has no labelled test images.")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Report folder (default: the head's).")
@_friendly
def evaluate(store_path, head_path, split, out) -> None:
    """Evaluate a head on a store split: metrics JSON and PNG plots."""
    metrics = emoreact.evaluate(store_path, head_path, split, out)
    click.echo(json.dumps(_summary(metrics, out or head_path)))


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--store", "store_path", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--head", "head_path", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--k", default=5, show_default=True, type=click.IntRange(0, 100), help="Neighbours per image.")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Write the results to this .jsonl or .parquet file, batch by batch, and print a summary.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1),
              help="Images read, decoded and embedded at a time.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar (shown with --out).")
@click.option("--device", default="auto", show_default=True)
@click.option("--pretrained", default=None, help="Weights of the store's model, if moved since embedding.")
@click.option("--caption", default=None, help="The caption posted with IMAGE (one image file).")
@_setting(PredictorConfig, "ocr", "--ocr", show_default=True, type=click.Choice(OCR_MODES),
          help="Read the words in each image: auto, when the head reads words and the ocr extra is installed; "
               "on; off.")
@_with(_runtime_options(PredictorConfig))
@_with(_clip_options(PredictorConfig))
@_labels_option
@_friendly
def predict(images, store_path, head_path, k, out, batch_size, no_progress, device, pretrained, caption, ocr,
            runtime, precision, max_frames, clip_seconds, clip_pooling, labels_path) -> None:
    """Predict emotions and emoji reactions for IMAGES: files, folders or CSV/JSONL manifests (every image they
    list, with its caption column). One JSON object per image per line, or a file with --out; exits 1 if an
    image could not be read."""
    from emoreact.outputs import output_format
    from emoreact.cli_predict import image_paths, predict_to_file

    if out is not None:
        output_format(out)  # a wrong suffix fails before the model loads
    if caption is not None and (len(images) != 1 or not Path(images[0]).is_file()
                                or Path(images[0]).suffix.lower() in (".csv", ".jsonl")):
        raise click.UsageError("--caption goes with one image file; for many images give a CSV/JSONL manifest "
                               "with a caption column")
    predictor = emoreact.load(store_path, head_path, device=device, labels=labels_path, pretrained=pretrained, ocr=ocr,
                              runtime=runtime, precision=precision, max_frames=max_frames, clip_seconds=clip_seconds,
                              clip_pooling=clip_pooling)
    with predictor:
        paths = image_paths(images, predictor.head.label_config, caption)
        if out is not None:
            summary = predict_to_file(predictor, paths, out, batch_size=batch_size, k=k, progress=not no_progress)
            click.echo(json.dumps(summary))
            failed = summary["errors"] > 0
        else:
            failed = False
            for result in predictor.predict_many(paths, batch_size=batch_size, k=k):
                failed |= "error" in result
                click.echo(json.dumps(result, ensure_ascii=False))
    if failed:
        sys.exit(1)


@main.command()
@click.option("--store", "store_path", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--head", "head_path", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Result file: .parquet or .jsonl.")
@click.option("--split", default=None, type=click.Choice(["train", "val", "test"]), help="Default: every image.")
@click.option("--batch-rows", default=65_536, show_default=True, type=click.IntRange(1),
              help="Stored vectors read and scored at a time (one Parquet row group each).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@_labels_option
@_friendly
def score(store_path, head_path, out, split, batch_rows, no_progress, labels_path) -> None:
    """Score every stored image with a head, from its stored vector (nothing is re-embedded): per image its id,
    path, split, calibrated scores, predicted emotions, allowed (best first) and blocked emojis. Prints a summary."""
    summary = emoreact.score(store_path, head_path, out, split, labels=labels_path, batch_rows=batch_rows,
                             progress=not no_progress)
    click.echo(json.dumps(summary))


@main.command()
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False))
@click.option("--store", "store_path", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--wait", is_flag=True, help="If another job is writing the store, wait for it instead of failing.")
@_friendly
def label(manifest, store_path, wait) -> None:
    """Set stored images' labels (and splits) from MANIFEST without re-embedding. MANIFEST is CSV (header) or
    JSONL naming each image by path or sha256, with labels (a|b; empty: unlabelled) and optionally split.
    Prints the counts of changed, unchanged and unknown rows."""
    click.echo(json.dumps(emoreact.relabel(store_path, manifest, wait=wait)))


@main.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--store", "store_path", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--k", default=5, show_default=True, type=click.IntRange(1, 100))
@click.option("--device", default="auto", show_default=True)
@click.option("--pretrained", default=None, help="Weights of the store's model, if moved since embedding.")
@_friendly
def neighbours(image, store_path, k, device, pretrained) -> None:
    """Print the K indexed images nearest to IMAGE (cosine similarity), as JSON."""
    from emoreact.predictor import load_for_neighbours

    with load_for_neighbours(store_path, device=device, pretrained=pretrained) as searcher:
        _, decoded = searcher.decode(image)  # the reduced JPEG decode of predict and embed
        near = searcher.neighbours(searcher.embed([decoded]), k)[0]
    click.echo(json.dumps({"image": image, "neighbours": near}, ensure_ascii=False))


@main.command()
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the demo store, head and report.")
@click.option("--no-serve", is_flag=True, help="Stop after the report instead of starting the web page.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--device", default="auto", show_default=True)
@_labels_option
@click.pass_context
@_friendly
def demo(ctx, out, no_serve, host, port, device, labels_path) -> None:
    """Offline demo: shipped emoji images + bundled emoji CLIP -> store, head, report, web page."""
    from emoreact.offline_demo import DEMO_LABELS, run_demo

    summary = run_demo(Path(out), load_label_config(labels_path or DEMO_LABELS), device=device)
    click.echo(json.dumps({k: summary[k] for k in ("seconds", "model_id", "test_macro_f1", "store", "head")}
                          | {"report": str(Path(out) / "report.json"),
                             "criteria_met": summary["quality"]["criteria"]["all_met"]}))
    if not no_serve:
        ctx.invoke(serve, store_path=summary["store"], head_path=summary["head"], host=host, port=port,
                   device=device)


@main.command()
@click.option("--store", "store_path", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--head", "head_path", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 exposes the server to the network.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--threads", default=4, show_default=True, type=click.IntRange(1),
              help="Requests handled at once; all share the one loaded model.")
@click.option("--max-upload-mb", default=_default(WebConfig, "max_upload_bytes") / MiB, show_default=True,
              type=click.FloatRange(min=0, min_open=True), help="Largest request body; more answers 413.")
@_setting(WebConfig, "max_files", "--max-files", show_default=True, type=click.IntRange(1), help="Images per request.")
@_setting(WebConfig, "k_default", "--k", show_default=True, type=click.IntRange(0, 100),
          help="Neighbours per image when a request names no k.")
@_setting(WebConfig, "device", "--device", show_default=True)
@_setting(WebConfig, "micro_batch", "--micro-batch/--no-micro-batch",
          help="Run concurrent requests' model calls as one batch (default: on a GPU only).")
@_setting(WebConfig, "pretrained", "--pretrained", help="Weights of the store's model, if moved since embedding.")
@_setting(WebConfig, "ocr", "--ocr", show_default=True, type=click.Choice(OCR_MODES),
          help="Read the words in uploads: auto, when the head reads words and the ocr extra is installed; on; off.")
@_with(_runtime_options(WebConfig))
@_with(_clip_options(WebConfig))
@_setting(WebConfig, "api_keys", "--api-keys", type=click.Path(exists=True, dir_okay=False, path_type=Path),
          help="File of API keys, one `name:key` or `name:key:admin` per line. Feedback needs a key, "
               "retraining an admin key; without this file neither is possible.")
@_setting(WebConfig, "require_key_for_read", "--require-key-for-read", is_flag=True,
          help="Predict, neighbours, labels, thumbnails and /metrics need a key too (default: open).")
@_setting(WebConfig, "feedback_per_minute", "--feedback-per-minute", show_default=True,
          type=click.FloatRange(min=0, min_open=True),
          help="Corrections one key may send a minute (and in a burst); more answer 429.")
@_setting(WebConfig, "unsure_above", "--unsure-above", show_default=True, type=click.FloatRange(0, 1, min_open=True),
          help="Novelty at which a result is flagged unsure: 0.99 flags about 1% of images like the indexed ones.")
@_setting(WebConfig, "nprobe", "--nprobe", type=click.IntRange(1),
          help="Lists an approximate index probes per query: higher finds more true neighbours, slower. "
               "Default: the value tuned to the recall target when the index was built (in the store manifest).")
@_setting(WebConfig, "candidates", "--candidates", type=click.IntRange(1),
          help="Proposals of an approximate index re-ranked exactly per query. Default: as tuned at build time.")
@_labels_option
@_friendly
def serve(store_path, head_path, host, port, threads, max_upload_mb, labels_path, **settings) -> None:
    """Serve the upload page and the JSON API with waitress; the model is loaded once, at start.

    SIGHUP (kill -HUP PID) reloads the store and head from the same paths: requests already running
    finish on the old ones, new requests get the new ones. If they do not load (corrupt or half-written
    files), the error is logged and the previous store and head keep serving. To switch stores, point
    --store at a symlink, re-point it, then send SIGHUP. /healthz shows the index size served and how
    the last reload went.
    """
    from emoreact.web import create_app, make_server, reload_on_sighup

    # Every other option is a WebConfig field of the same name: the settings travel as this one object.
    config = WebConfig(store=Path(store_path), head=Path(head_path), labels=Path(labels_path) if labels_path else None,
                       max_upload_bytes=int(max_upload_mb * MiB), **settings)
    # Access log lines (one per request, with its id) are written whatever the -v level.
    logging.getLogger("emoreact.access").setLevel(logging.INFO)
    app = create_app(config)
    server = make_server(app, host, port, threads)
    model_id = app.extensions["emoreact"].predictor.store.model_id
    with reload_on_sighup(app) as reloads:
        keys = f"Ctrl+C stops, kill -HUP {os.getpid()} reloads" if reloads else "Ctrl+C stops"
        bound = getattr(server, "effective_port", port)  # a multi-address server has no single port
        click.echo(f"EmoReact ({model_id}) on http://{host}:{bound}/  API docs: /docs  ({keys})")
        server.run()


@main.command()
@click.option("--store", "store_path", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--index", "index_kind", default=None, metavar="auto|flat|ivf|FACTORY",
              help="Index kind (see embed --index). Default: the store's choice.")
@click.option("--wait", is_flag=True, help="If another job is writing the store, wait for it instead of failing.")
@click.option("--engine", default="local", show_default=True, type=click.Choice(["local", "ray"]),
              help="local: this process; ray: vectors added by Ray tasks, merged here (pip install \"emoreact[ray]\").")
@click.option("--ray-address", default=None, help="ray: the cluster to join (auto: the one `ray start` began); "
                                                   "default: RAY_ADDRESS, else a local Ray of its own. "
                                                   "Every node must see the store's path.")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="ray: tasks, each adding a run of shards (default: one per CPU of the cluster).")
@_friendly
def reindex(store_path, index_kind, wait, engine, ray_address, workers) -> None:
    """Build the store's index anew: re-train its quantizer, re-tune nprobe for recall@10 >= 0.95, publish atomically."""
    from emoreact.index import Store
    from emoreact.index.ray_build import RayIndexBuilder
    from emoreact.rayutil import RayConfig

    # before the store lock: without the extra this fails at once
    builder = RayIndexBuilder(RayConfig(address=ray_address, workers=workers)) if engine == "ray" else None
    with Store.open_for_writing(store_path, wait=wait) as store:
        settings = store.reindex(_index_choice(index_kind), builder=builder)
        click.echo(json.dumps({"store": str(store_path), "images": len(store), **settings.to_json()}))


@main.command()
@click.option("--store", "store_path", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--id", "ids", multiple=True, type=click.IntRange(0), help="Image id to remove (repeatable).")
@click.option("--sha256", "hashes", multiple=True, help="Content hash of an image to remove (repeatable).")
@click.option("--manifest", "manifest", type=click.Path(exists=True, dir_okay=False),
              help="CSV/JSONL/text file of ids, sha256 or paths (one column named id, sha256 or path; or one per line).")
@click.option("--reason", required=True, help="Why (takedown, privacy request ...): kept in the removal log.")
@click.option("--by", default=None, help="Who asks; default: the user running the command.")
@click.option("--wait", is_flag=True, help="If another job is writing the store, wait for it instead of failing.")
@_friendly
def remove(store_path, ids, hashes, manifest, reason, by, wait) -> None:
    """Remove images for good: never again in search, neighbours, thumbnails, scoring or training; their vectors
    are overwritten, and a later embed refuses the same file (embed --allow-readd lifts that)."""
    import getpass

    from emoreact.index import Store
    from emoreact.index.removal import resolve_targets

    if not (ids or hashes or manifest):
        raise click.UsageError("name the images to remove: --id N, --sha256 HASH or --manifest FILE")
    with Store.open_for_writing(store_path, wait=wait) as store:
        targets = resolve_targets(store, ids, hashes, manifest)
        removed = store.remove(targets, reason, by or getpass.getuser())
        click.echo(json.dumps({"store": str(store_path), "removed": len(removed), "ids": removed,
                               "images_left": len(store)}))


@main.command()
@click.option("--store", "store_path", required=True, type=click.Path(exists=True, file_okay=False))
@_friendly
def removed(store_path) -> None:
    """List the removal log: id, content hash, when, by whom and why; one JSON object per line."""
    from emoreact.index import Store

    with Store.open(store_path, with_index=False) as store:
        for entry in store.removed():
            click.echo(json.dumps(entry))


@main.command()
@click.argument("what", type=click.Choice(["embed", "head", "index", "codes", "api", "dedup", "posts", "clips",
                                           "runtime"]))
@click.option("--device", default="auto", show_default=True)
@click.option("--model", default=None,
              help=f"Backbone: embed/api/runtime {DEFAULT_MODEL} with random weights (runtime adds the bundled "
                   "model); posts and clips the bundled emoreact-emoji-s.")
@click.option("--size", default=None, type=click.IntRange(1),
              help="Images (embed: 256), vectors (head: 100000, index and codes: 1000000, dedup: 50000), "
                   "seconds per level (api and runtime: 10), posts per slice (posts: 60) or clips per kind and format "
                   "(clips: 20).")
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(1),
              help="embed: measure each pipeline this many times, in turn, and keep its best.")
@click.option("--engine", default="local", show_default=True, type=click.Choice(["local", "ray"]),
              help="embed: ray compares the Ray engine's job with the local engine's on the same images.")
@click.option("--index", "index_kind", default="auto", show_default=True, metavar="auto|flat|ivf|FACTORY",
              help="index: the index kind to build (auto: what the store would choose for --size).")
@click.option("--batch-size", default=None, type=click.IntRange(1),
              help="embed: images per model call (default 64 on the CPU, 512 on a GPU).")
@click.option("--workers", default=None, type=click.IntRange(0),
              help="embed: DataLoader processes reading files, ours and the baseline's (default 2 on the CPU, "
                   "up to 16 on a GPU).")
@click.option("--keep", default=None, type=click.Path(file_okay=False),
              help="index: write the synthetic store here and keep it (default: a temporary folder, deleted); "
                   "if it already holds a store, measure that one again (no generation, build or growth). "
                   "codes: measure the store here instead of generating one. posts: keep the post set and store here. "
                   "clips: keep the store, head and clips here.")
@_friendly
def bench(what, device, model, size, rounds, engine, index_kind, batch_size, workers, keep) -> None:
    """Benchmark one stage against a baseline measured in the same run; prints JSON."""
    from emoreact.bench import api_bench, codes_bench, dedup_bench, embed_bench, head_bench, index_bench

    if what == "posts":
        from emoreact.bench import posts_bench

        result = posts_bench.run(model or "emoreact-emoji-s", per_slice=size or 60,
                                 device="cpu" if device == "auto" else device, keep=keep)
        click.echo(json.dumps(result, indent=2, ensure_ascii=False))
        return
    if what == "clips":
        from emoreact.bench import clips_bench

        result = clips_bench.run(model or "emoreact-emoji-s", per_kind=size or 20,
                                 device="cpu" if device == "auto" else device, keep=keep)
        click.echo(json.dumps(result, indent=2))
        return
    model = model or DEFAULT_MODEL
    if what == "embed":
        result = embed_bench.run(model, images=size or 256, batch_size=batch_size, workers=workers, device=device,
                                 rounds=rounds, engine=engine)
    elif what == "head":
        result = head_bench.run(size or 100_000, device=device)
    elif what == "index":
        result = index_bench.run(size or 1_000_000, index=index_kind, keep=keep,
                                 device="cuda" if device.startswith("cuda") else "cpu")
    elif what == "codes":
        result = codes_bench.run(size or 1_000_000, keep=keep)
    elif what == "dedup":
        result = dedup_bench.run(size or 50_000)
    elif what == "runtime":  # torch fp32 against ONNX Runtime fp32 and int8, on the CPU (the onnx extra)
        from emoreact.bench import runtime_bench

        if device not in ("auto", "cpu"):
            raise click.UsageError("bench runtime measures the CPU: pass --device cpu")
        result = runtime_bench.run(model, seconds=size or 10, rounds=rounds)
    else:
        result = api_bench.run(model, seconds=size or 10, device=device)
    click.echo(json.dumps(result, indent=2))


def _index_choice(value: str | None) -> str | None:
    """Gives an --index value checked early (a FAISS factory string on a D = 512 probe), before hours of embedding."""
    if value is None or value in ("auto", "flat", "ivf"):
        return value
    from emoreact.index.ann import factory_for

    return factory_for(value, 0, 512)


def _threshold_or_off(value: str) -> float | None:
    if value == "off":
        return None
    try:
        threshold = float(value)
    except ValueError:
        threshold = float("nan")
    if not 0 < threshold <= 1:
        raise click.BadParameter(f"{value!r} is not a cosine similarity in (0, 1] nor 'off'; try 0.95")
    return threshold


def _summary(metrics: dict, out) -> dict:
    keep = ("split", "split_note", "count", "task", "top1_accuracy", "macro_f1", "micro_f1", "mAP", "ece",
            "ece_before_calibration", "alpha", "epochs", "l2_strengths_tried")
    summary = {k: metrics[k] for k in keep if k in metrics}
    summary["per_label_f1"] = {k: round(v["f1"], 4) for k, v in metrics.get("per_label", {}).items()}
    summary["report"] = str(out)
    return summary


if __name__ == "__main__":
    main()
