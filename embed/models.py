"""Loading open_clip backbones by one identifier, with clear errors when weights are missing.

A backbone is named by a `ModelSpec`: an open_clip model name (or a model-config JSON file)
plus a `pretrained` source:

- an open_clip pretrained tag (``laion2b_s34b_b79k``): fetched into the Hugging Face cache,
- a local weights file (``.bin``/``.pt``/``.safetensors``) or a folder holding one,
- ``local-dir:FOLDER`` / ``hf-hub:ORG/REPO`` (open_clip's own forms, as `model` or `pretrained`;
  the folder's or repository's config then decides the architecture; a cached repository loads
  from the cache with no network call),
- ``none``: random weights seeded with 0, for tests and benchmarks,
- ``emoreact``: the weights bundled in ``embed/weights/`` (the offline ``emoreact-emoji-s`` model).

`default_pretrained(model)` picks the weights when none are named.

`ModelSpec` (in `identity`) gives the one model id written into every artifact.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .identity import (DEFAULT_MODEL, DEFAULT_PRETRAINED, HUB, LOCAL_DIR, RANDOM_WEIGHTS, WEIGHT_SUFFIXES,
                       ModelLoadError, ModelSpec, is_local_path, weights_file)

if TYPE_CHECKING:
    from .runtime import OnnxTowers

log = logging.getLogger(__name__)

BUNDLED_TAG = "emoreact"
_BUNDLED_CONFIGS = Path(__file__).parent / "model_configs"
_BUNDLED_WEIGHTS = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class Preprocess:
    """How images must be prepared for this backbone (open_clip's PreprocessCfg, as JSON)."""

    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    def to_json(self) -> dict:
        return {"image_size": list(self.image_size), "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, "resize_mode": self.resize_mode}


@dataclass
class Backbone:
    """A loaded CLIP model in eval mode with its preprocessing and tokenizer."""

    spec: ModelSpec
    model: torch.nn.Module
    transform: object  # torchvision transform: PIL image -> (3, H, W) float tensor
    tokenizer: object
    preprocess: Preprocess
    device: torch.device
    dim: int  # embedding width
    towers: OnnxTowers | None = None  # `runtime.OnnxTowers` when spec.runtime is onnx: they run instead of `model`

    @torch.inference_mode()
    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        """Gives (N, D) float32 unit-norm image embeddings for a (N, 3, H, W) batch."""
        if self.towers is not None:
            return torch.nn.functional.normalize(self.towers.encode_images(batch), dim=-1)
        batch = batch.to(self.device, non_blocking=True)
        with _autocast(self.device):
            features = self.model.encode_image(batch)
        return torch.nn.functional.normalize(features.float(), dim=-1)

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Gives (N, D) float32 unit-norm text embeddings."""
        if self.towers is not None:
            return torch.nn.functional.normalize(self.towers.encode_tokens(self.tokenizer(texts)), dim=-1)
        tokens = self.tokenizer(texts).to(self.device)
        with _autocast(self.device):
            features = self.model.encode_text(tokens)
        return torch.nn.functional.normalize(features.float(), dim=-1)


def default_pretrained(model: str) -> str:
    """Gives the weights used when none are named: bundled ones, laion2b for ViT-B-32, else the first tag."""
    import open_clip

    if model.startswith((HUB, LOCAL_DIR)):
        return model  # the repository or folder holds its own weights
    name = Path(model).stem if model.endswith(".json") else model
    if bundled_weights(name) is not None:
        return BUNDLED_TAG
    if name == DEFAULT_MODEL:
        return DEFAULT_PRETRAINED
    tags = open_clip.list_pretrained_tags_by_model(name)
    if not tags:
        raise ModelLoadError(f"model {model!r} has no pretrained tag; pass --pretrained FILE or --pretrained none")
    return tags[0]


def bundled_weights(name: str) -> Path | None:
    """Gives the path of weights shipped with EmoReact for a model name, or None."""
    path = _BUNDLED_WEIGHTS / f"{name}.safetensors"
    return path if path.is_file() else None


def resolve_device(device: str = "auto") -> torch.device:
    """Gives the torch device for ``auto``/``cpu``/``cuda[:N]``; refuses cuda without a GPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {device} was asked for but no CUDA GPU is visible; use --device cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as exc:
        raise ModelLoadError(f"unknown device {device!r}; use auto, cpu or cuda") from exc
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ModelLoadError(f"--device {device} was asked for but only {count} CUDA GPU(s) are visible "
                             f"(cuda:0 to cuda:{count - 1}); pick one of them")
    return chosen


def load_backbone(spec: ModelSpec, device: str = "auto") -> Backbone:
    """Gives the backbone named by `spec`, in eval mode on `device`; with ``spec.runtime == "onnx"`` its
    towers run through ONNX Runtime on the CPU (embed/runtime.py), exported once and cached."""
    import open_clip

    if spec.runtime == "onnx":
        from .runtime import require_onnx

        require_onnx()  # at once, before the weights load
        if device != "auto" and resolve_device(device).type != "cpu":
            raise ModelLoadError(f"--runtime onnx runs on the CPU, but --device {device} was given; "
                                 "pass --device cpu, or --runtime torch to use the GPU")
        device = "cpu"
    torch_device = resolve_device(device)
    if spec.hub is not None:
        name, kwargs = _hub_source(spec.hub), {}
    else:
        name = _register_config(spec.model)
        kwargs = _weights_kwargs(spec, name)
    try:
        # Random weights must be the same in every process (embeddings from two runs must agree),
        # without resetting the caller's random state: the seed is set inside a fork of it.
        with torch.random.fork_rng(devices=_cuda_devices(torch_device)):
            torch.manual_seed(0)
            model, _, transform = open_clip.create_model_and_transforms(name, device=torch_device, **kwargs)
        tokenizer = open_clip.get_tokenizer(name)
    except ModelLoadError:
        raise
    except (RuntimeError, FileNotFoundError, ValueError, OSError) as exc:
        raise ModelLoadError(f"could not build model {spec.model_id!r}: {exc}. {_HOW_TO_SUPPLY}") from exc
    model.eval()
    cfg = model.visual.preprocess_cfg
    size = cfg["size"] if isinstance(cfg["size"], (tuple, list)) else (cfg["size"], cfg["size"])
    preprocess = Preprocess(image_size=tuple(int(s) for s in size), mean=tuple(cfg["mean"]),
                            std=tuple(cfg["std"]), interpolation=cfg.get("interpolation", "bicubic"),
                            resize_mode=cfg.get("resize_mode", "shortest"))
    h, w = preprocess.image_size
    with torch.inference_mode():
        dim = int(model.encode_image(torch.zeros(1, 3, h, w, device=torch_device)).shape[-1])
    towers = _onnx_towers(spec, name, kwargs, model, preprocess) if spec.runtime == "onnx" else None
    return Backbone(spec, model, transform, tokenizer, preprocess, torch_device, dim, towers)


def _onnx_towers(spec: ModelSpec, name: str, kwargs: dict, model, preprocess: Preprocess) -> OnnxTowers:
    """Gives the model's towers as ONNX Runtime sessions, from the cache or exported now."""
    import open_clip

    from .runtime import OnnxTowers

    if name.startswith(LOCAL_DIR):
        weights_path = weights_file(Path(name[len(LOCAL_DIR):]))
    else:
        weights_path = Path(kwargs["pretrained"]) if kwargs.get("pretrained") and is_local_path(
            kwargs["pretrained"]) else None
    config = open_clip.get_model_config(name) or {"name": name}
    return OnnxTowers(model, spec, config, weights_path, preprocess.image_size,
                      int(getattr(model, "context_length", 77)))


def available_models() -> list[str]:
    """Gives the model names open_clip knows, bundled configs included."""
    import open_clip

    for path in sorted(_BUNDLED_CONFIGS.glob("*.json")):
        open_clip.add_model_config(path)
    return open_clip.list_models()


_HOW_TO_SUPPLY = (
    "To run offline, pass --pretrained with a local weights file or folder "
    "(e.g. open_clip_pytorch_model.bin downloaded on another machine), or copy the Hugging Face cache "
    "(~/.cache/huggingface/hub) from a machine that has the weights; --pretrained none gives random "
    "weights for tests."
)


def _register_config(model: str) -> str:
    """Gives the open_clip name to create, registering a config JSON file when one is given."""
    import open_clip

    for path in sorted(_BUNDLED_CONFIGS.glob("*.json")):
        open_clip.add_model_config(path)
    if model.endswith(".json"):
        path = Path(model)
        if not path.is_file():
            raise ModelLoadError(f"model config {model} does not exist; give an open_clip model name "
                                 f"(see `cli.py info`) or the path of a model-config JSON")
        try:
            cfg = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ModelLoadError(f"model config {model} is not valid JSON: {exc}") from exc
        if "vision_cfg" not in cfg or "embed_dim" not in cfg:
            raise ModelLoadError(f"model config {model} lacks embed_dim/vision_cfg: not an open_clip config")
        open_clip.add_model_config(path)
        return path.stem
    if model in open_clip.list_models():
        return model
    raise ModelLoadError(f"unknown model {model!r}; choose one listed by `cli.py info` "
                         f"(e.g. ViT-B-32, ViT-L-14) or give a model-config JSON path")


def _hub_source(reference: str) -> str:
    """Gives the open_clip name for an ``hf-hub:``/``local-dir:`` reference: a cached repository is
    read from the cache as a local folder, so that it loads offline with no network call."""
    if reference.startswith(LOCAL_DIR):
        _check_model_folder(Path(reference[len(LOCAL_DIR):]), reference)
        return reference
    snapshot = _cached_snapshot(reference[len(HUB):])
    if snapshot is not None:
        return LOCAL_DIR + str(snapshot)
    _require_hub(reference)
    return reference


def _cached_snapshot(repo: str) -> Path | None:
    """Gives the Hugging Face cache folder holding a repository's open_clip config and weights, or None."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(repo, "open_clip_config.json")
    if not isinstance(config, str):
        return None
    folder = Path(config).parent
    return folder if any(p.suffix in WEIGHT_SUFFIXES for p in folder.iterdir()) else None


def _check_model_folder(folder: Path, reference: str) -> None:
    # open_clip only warns when a folder holds no weights, then builds a random model: refuse instead.
    if not (folder / "open_clip_config.json").is_file():
        raise ModelLoadError(f"{reference}: {folder} holds no open_clip_config.json; give a folder with an "
                             "open_clip config and weights, or --model NAME --pretrained FILE")
    if not any(p.suffix in WEIGHT_SUFFIXES for p in folder.iterdir()):
        raise ModelLoadError(f"{reference}: {folder} holds no {'/'.join(WEIGHT_SUFFIXES)} weights file")


def _weights_kwargs(spec: ModelSpec, name: str) -> dict:
    """Gives create_model keyword arguments for the weights source, failing fast when offline."""
    import open_clip

    source = spec.pretrained
    if source == RANDOM_WEIGHTS:
        return {"pretrained": None}
    if source == BUNDLED_TAG:
        path = bundled_weights(name)
        if path is None:
            raise ModelLoadError(f"EmoReact bundles no weights for {name!r}; bundled models: "
                                 f"{sorted(p.stem for p in _BUNDLED_WEIGHTS.glob('*.safetensors'))}")
        return {"pretrained": str(path)}
    if is_local_path(source):
        path = weights_file(Path(source))
        if path.is_dir():
            raise ModelLoadError(f"weights folder {path} holds no {'/'.join(WEIGHT_SUFFIXES)} file")
        if not path.is_file():
            raise ModelLoadError(f"weights file {path} does not exist. {_HOW_TO_SUPPLY}")
        return {"pretrained": str(path)}
    cfg = open_clip.get_pretrained_cfg(name, source)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ModelLoadError(f"{source!r} is neither a pretrained tag of {name} nor an existing file; "
                             f"tags of {name}: {', '.join(tags) or 'none'}")
    if not _tag_is_cached(cfg):
        _require_hub(f"{name}/{source}")
    return {"pretrained": source}


def _tag_is_cached(cfg: dict) -> bool:
    """Tells whether a pretrained tag's weights already lie in the Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    hub = cfg.get("hf_hub", "")
    if not hub:
        return False
    repo, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    if filename.endswith(".bin"):
        names.insert(0, filename[:-4] + ".safetensors")
    return any(isinstance(try_to_load_from_cache(repo, n), str) for n in names)


def _require_hub(what: str) -> None:
    """Raises at once when the weights host cannot be reached (instead of a minute of retries)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise ModelLoadError(f"weights for {what} are not in the local cache and HF_HUB_OFFLINE is set. "
                             + _HOW_TO_SUPPLY)
    host = urllib.parse.urlparse(constants.ENDPOINT).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as exc:
        raise ModelLoadError(f"weights for {what} are not in the local cache and cannot be downloaded "
                             f"({host} unreachable: {exc}). " + _HOW_TO_SUPPLY) from exc


def _cuda_devices(device: torch.device) -> list[int]:
    # torch.manual_seed also seeds every GPU; fork all of them so that none keeps the seed.
    return list(range(torch.cuda.device_count())) if device.type == "cuda" else []


def _autocast(device: torch.device):
    # bf16 keeps fp32's range, so no loss scaling is needed; CPU stays in fp32 for exact, portable answers.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)

