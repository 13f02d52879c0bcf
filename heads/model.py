"""The emotion head: a linear or MLP layer over CLIP vectors, an optional zero-shot prior, thresholds.

Saved as a folder: `manifest.json` (config, labels, model id, thresholds, blend weight) and
`weights.safetensors` (no pickle anywhere), plus the label config it was trained with.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from emoreact import __version__
from emoreact.index import atomic_write_bytes, atomic_write_text, read_manifest
from emoreact.labels import ConfigError, LabelConfig, load_label_config, parse_label_config
from .config import HeadConfig, TrainingSettings, head_kind
from .fusion import Fusion
from .metrics import FALLBACKS, decide

HEAD_FORMAT = "emoreact-head"
# Version 2 added the task (softmax heads), calibration and the search record: a version-1 reader
# would silently skip the calibration, so it must refuse these heads, and this reader refuses v1 ones.
HEAD_VERSION = 2


class HeadError(RuntimeError):
    """A head cannot be used or loaded; the message names the file and the fix."""


class Standardize(torch.nn.Module):
    """Fixed per-dimension standardisation, set from the training vectors.

    CLIP vectors share a large common direction (mean pairwise cosine 0.5 for pretrained models,
    near 1 for random ones); centring and scaling lets a small, weight-decayed layer use the rest.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, x: torch.Tensor) -> "Standardize":
        mean = x.mean(0)
        # From the mean of squares: two fast reductions instead of torch.std's slow strided pass.
        variance = ((x * x).mean(0) - mean * mean).clamp_min(0) * (len(x) / max(1, len(x) - 1))
        self.mean.copy_(mean)
        self.std.copy_(variance.sqrt().clamp_min(1e-6))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def build_net(config: HeadConfig, dim: int, num_labels: int) -> torch.nn.Sequential | None:
    """Gives the trainable part: (N, D) -> (N, L) logits; layer 0 standardises, then the kind's layers
    (None for a kind without layers: the zero-shot head)."""
    kind = head_kind(config.kind)
    if not kind.trained:
        return None
    return torch.nn.Sequential(Standardize(dim), *kind.layers(config, dim, num_labels))


@dataclass
class ZeroShotPrior:
    """Class text embeddings and a per-label affine calibration of their cosine scores."""

    text: np.ndarray  # (L, D) float32, unit-norm: mean prompt embedding per label
    scale: np.ndarray  # (L,) float32: calibrated logit = scale * cos + bias
    bias: np.ndarray  # (L,) float32

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Gives (N, L) calibrated zero-shot logits for (N, D) vectors."""
        text = torch.as_tensor(self.text, device=x.device)
        return (x @ text.T) * torch.as_tensor(self.scale, device=x.device) + torch.as_tensor(self.bias, device=x.device)


class EmotionHead:
    """A trained (or zero-shot) head: `predict_proba` gives calibrated scores, `decide` the labels.

    Learned state ends in `_`. For the scikit-learn estimator contract (fit/predict on raw arrays,
    get_params, cross-validation) use `LinearHead`/`MLPHead` from `emoreact.heads`, which build one.
    """

    def __init__(self, config: HeadConfig, labels: LabelConfig, model_id: str, dim: int) -> None:
        self.config = config
        self.label_config = labels
        self.labels = labels.names
        self.model_id = model_id
        self.dim = dim
        self.backbone: dict | None = None  # {"model", "pretrained"} it was trained on, so it loads without a store
        self.net_: torch.nn.Module | None = build_net(config, dim, len(self.labels))
        self.prior_: ZeroShotPrior | None = None
        self.alpha_: float = 0.0  # blend weight of the prior: logits = (1 - a) * head + a * prior
        self.thresholds_ = np.full(len(self.labels), 0.5, np.float32)
        self.task_ = "multi"  # single: softmax, the top label plus any other over its threshold
        self.fallback_ = "top"  # multi: the label an image with none over threshold gets (metrics.decide)
        self.activation_ = "sigmoid"  # softmax for single-label heads and the zero-shot-only head
        # Calibration: probabilities come from logits / temperature + offset (per label; one shared
        # temperature and no offset for softmax, which keeps the top label unchanged).
        self.temperature_ = np.ones(len(self.labels), np.float32)
        self.offset_ = np.zeros(len(self.labels), np.float32)
        self.l2_: list[float] | None = None  # linear head: the L2 strength chosen per label
        self.search_: list[dict] = []  # what the regularisation search tried, with validation scores
        # A post head (heads/fusion.py) also reads a post's words: a text head over its text vector and the
        # fusion of the two channels. None: an image-only head, which judges every post by its picture.
        self.text_head_: EmotionHead | None = None
        self.fusion_: Fusion | None = None
        self.fitted_ = False

    @property
    def task(self) -> str:
        """Gives "single" or "multi": how labels are decided (kept in the manifest)."""
        return self.task_

    @property
    def inputs(self) -> list[str]:
        """Gives what the head reads: ["image"], or for a post head ["image", "text", "has_text"]."""
        return ["image"] if self.fusion_ is None else ["image", "text", "has_text"]

    @property
    def reads_text(self) -> bool:
        return self.fusion_ is not None

    @torch.inference_mode()
    def predict_proba(self, x: np.ndarray, calibrated: bool = True, *, overwrite_x: bool = False,
                      text: np.ndarray | None = None) -> np.ndarray:
        """Gives (N, L) float32 scores in [0, 1] for (N, D) unit-norm vectors (rows sum to 1 for a
        softmax head); `calibrated=False` skips the temperature (for before/after reports).

        `text`: the posts' (N, D) text vectors, zero rows for posts without words; a post head fuses the
        two channels for posts with words (heads/fusion.py), an image-only head ignores them.
        overwrite_x=True lets a writable float32 `x` be standardised in place (its values are lost):
        the same scores without two (N, D) temporaries, for batch scoring of stored vectors."""
        words = self.words(text, len(x))
        if words.any():
            image = self.channel_logits(x)  # one forward pass gives the image's scores and the fusion's input
            fused = (self.logits_to_proba(torch.from_numpy(image)).numpy() if calibrated
                     else self.predict_proba(x, calibrated=False))
            fused[words] = self.fusion_.proba(image[words], self.text_head_.channel_logits(text[words]))
            return fused
        if not self.fitted_:
            raise HeadError("this head is not trained; call fit_head(...) or load a saved head first")
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise HeadError(f"expected vectors of shape (N, {self.dim}), got {x.shape}")
        tensor = torch.from_numpy(x)
        raw_needed = self.net_ is None or (self.prior_ is not None and self.alpha_ != 0.0)  # the prior reads raw x
        if overwrite_x and not raw_needed and x.flags.writeable and x.flags.c_contiguous:
            self.net_.eval()
            standardize = self.net_[0]
            logits = self.net_[1:](tensor.sub_(standardize.mean).div_(standardize.std)).float()
        else:
            logits = self.logits(tensor)
        return self.logits_to_proba(self.calibrate(logits) if calibrated else logits).numpy()

    def decide(self, probs: np.ndarray, text: np.ndarray | None = None) -> np.ndarray:
        """Gives (N, L) bool labels for `predict_proba` scores, by this head's task and thresholds (the
        fusion's, for the posts whose `text` vectors hold words, when this is a post head)."""
        chosen = decide(probs, self.thresholds_, self.task_, self.fallback_)
        words = self.words(text, len(probs))
        if words.any():
            chosen[words] = self.fusion_.decide(probs[words])
        return chosen

    def words(self, text: np.ndarray | None, count: int) -> np.ndarray:
        """Gives (N,) bool: the posts whose words this head reads (none for an image-only head)."""
        if text is None or self.fusion_ is None:
            return np.zeros(count, bool)
        text = np.asarray(text, np.float32)
        if text.shape != (count, self.dim):
            raise HeadError(f"expected text vectors of shape ({count}, {self.dim}), got {text.shape}")
        return np.any(text != 0, axis=1)

    @torch.inference_mode()
    def channel_logits(self, x: np.ndarray) -> np.ndarray:
        """Gives (N, L) calibrated logits of this head alone (one channel of a post head)."""
        tensor = torch.from_numpy(np.ascontiguousarray(x, np.float32))
        return self.calibrate(self.logits(tensor)).numpy()

    def channels(self, x: np.ndarray, text: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Gives each channel's own scores: ((N, L) the picture's, (N, L) the words' or None for an image-only
        head; rows of posts without words are NaN)."""
        image = self.predict_proba(x)
        if self.fusion_ is None:
            return image, None
        words = self.words(text, len(x))
        read = np.full_like(image, np.nan)
        if words.any():
            read[words] = self.text_head_.predict_proba(text[words])
        return image, read

    def logits(self, x: torch.Tensor, head_logits: torch.Tensor | None = None) -> torch.Tensor:
        """Gives (N, L) blended, uncalibrated logits; `head_logits` may be passed to reuse a forward pass."""
        if self.net_ is None:
            return self.prior_.logits(x)
        if head_logits is None:
            self.net_.eval()
            head_logits = self.net_(x).float()
        if self.prior_ is None or self.alpha_ == 0.0:
            return head_logits
        return (1.0 - self.alpha_) * head_logits + self.alpha_ * self.prior_.logits(x)

    def calibrate(self, logits: torch.Tensor) -> torch.Tensor:
        """Gives logits / temperature + offset, the calibrated logits."""
        return logits / torch.from_numpy(self.temperature_).to(logits.device) + torch.from_numpy(self.offset_).to(logits.device)

    def logits_to_proba(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, dim=-1) if self.activation_ == "softmax" else torch.sigmoid(logits)

    # ---- persistence ---------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """Writes the head to `folder` atomically, file by file; gives the folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {}
        if self.net_ is not None:
            tensors.update({f"net.{k}": v.detach().cpu().contiguous() for k, v in self.net_.state_dict().items()})
        if self.prior_ is not None:
            tensors.update({f"prior.{k}": torch.from_numpy(np.ascontiguousarray(getattr(self.prior_, k)))
                            for k in ("text", "scale", "bias")})
        atomic_write_bytes(folder / "weights.safetensors", save(tensors, metadata={"format": HEAD_FORMAT}))
        atomic_write_text(folder / "labels.toml", self.label_config.text)
        manifest = {"format": HEAD_FORMAT, "format_version": HEAD_VERSION, "model_id": self.model_id,
                    "dim": self.dim, "labels": self.labels, "config": asdict(self.config),
                    "thresholds": [float(t) for t in self.thresholds_], "alpha": self.alpha_,
                    "task": self.task_, "fallback": self.fallback_, "activation": self.activation_,
                    "temperature": [float(t) for t in self.temperature_], "offset": [float(o) for o in self.offset_],
                    "l2": self.l2_, "search": self.search_, "package_version": __version__,
                    "torch_version": torch.__version__}
        if self.backbone:
            manifest["backbone"] = self.backbone
        manifest["inputs"] = self.inputs
        if self.fusion_ is not None:  # the text head first: a manifest naming the fusion finds it there
            self.text_head_.save(folder / "text")
            manifest["fusion"] = self.fusion_.to_json()
        atomic_write_text(folder / "manifest.json", json.dumps(manifest, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path, model_id: str | None = None, dim: int | None = None) -> "EmotionHead":
        """Gives the head saved in `folder`; refuses another format, model or dimension."""
        folder = Path(folder)
        manifest = _read_manifest(folder / "manifest.json")
        if model_id is not None and manifest["model_id"] != model_id:
            raise HeadError(f"{folder / 'manifest.json'}: head was trained on {manifest['model_id']!r} vectors, "
                            f"but the store/model is {model_id!r}; retrain with `cli.py train`")
        if dim is not None and manifest["dim"] != dim:
            raise HeadError(f"{folder / 'manifest.json'}: head expects dim {manifest['dim']}, got {dim}")
        try:
            labels = parse_label_config((folder / "labels.toml").read_text(encoding="utf-8"),
                                        origin=str(folder / "labels.toml"))
        except (OSError, ConfigError) as exc:
            raise HeadError(f"{folder / 'labels.toml'} is missing or invalid ({exc}); retrain the head") from exc
        if labels.names != manifest["labels"]:
            raise HeadError(f"{folder}: labels.toml names {labels.names} but the head outputs {manifest['labels']}")
        known = {f.name for f in fields(HeadConfig)}
        head = cls(HeadConfig(**{k: v for k, v in manifest["config"].items() if k in known}), labels,
                   manifest["model_id"], manifest["dim"])
        tensors = _read_weights(folder / "weights.safetensors")
        try:
            if head.net_ is not None:
                head.net_.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
            if "prior.text" in tensors:
                head.prior_ = ZeroShotPrior(*(tensors[f"prior.{k}"].numpy() for k in ("text", "scale", "bias")))
        except RuntimeError as exc:
            raise HeadError(f"{folder / 'weights.safetensors'} does not match its manifest ({exc})") from exc
        head.thresholds_ = np.asarray(manifest["thresholds"], np.float32)
        head.alpha_ = float(manifest["alpha"])
        head.task_, head.activation_, head.fallback_ = manifest["task"], manifest["activation"], manifest["fallback"]
        head.temperature_ = np.asarray(manifest["temperature"], np.float32)
        head.offset_ = np.asarray(manifest["offset"], np.float32)
        head.l2_, head.search_ = manifest.get("l2"), manifest.get("search", [])
        if head.task_ not in ("single", "multi") or head.fallback_ not in FALLBACKS \
                or head.temperature_.shape != head.thresholds_.shape:
            raise HeadError(f"{folder / 'manifest.json'}: task {head.task_!r} or calibration does not fit "
                            f"{len(head.labels)} labels; retrain the head")
        head.backbone = manifest.get("backbone")
        if manifest.get("fusion") is not None:
            try:
                head.fusion_ = Fusion.from_json(manifest["fusion"], len(head.labels))
            except (KeyError, TypeError, ValueError) as exc:
                raise HeadError(f"{folder / 'manifest.json'}: its fusion is invalid ({exc}); retrain the head") from exc
            head.text_head_ = cls.load(folder / "text", head.model_id, head.dim)
        head.fitted_ = True
        return head

    def __getstate__(self) -> dict:
        # For pickling by scikit-learn tools (joblib, GridSearchCV(n_jobs=...)); saved heads never
        # use pickle. The label config holds read-only mappings, which pickle refuses: keep its text.
        state = dict(self.__dict__)
        config = self.label_config
        state["label_config"] = replace(config, datasets={k: dict(v) for k, v in config.datasets.items()})
        return state

    def __setstate__(self, state: dict) -> None:
        config = state["label_config"]
        state["label_config"] = replace(config, datasets=MappingProxyType(
            {k: MappingProxyType(v) for k, v in config.datasets.items()}))
        self.__dict__.update(state)

    def with_policy(self, labels: LabelConfig) -> "EmotionHead":
        """Gives this head using another emoji policy; label names must be the same, in order."""
        if labels.names != self.labels:
            raise HeadError(f"the label config names {labels.names} but the head outputs {self.labels}; "
                            "retrain the head to change labels")
        self.label_config = labels
        return self


def _read_manifest(path: Path) -> dict:
    return read_manifest(path, "head", HEAD_FORMAT, HEAD_VERSION,
                         ("model_id", "dim", "labels", "config", "thresholds", "alpha", "task", "fallback", "activation",
                          "temperature", "offset"), HeadError,
                         "train one with `cli.py train`")


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError as exc:
        raise HeadError(f"{path} is missing; retrain the head") from exc
    except (SafetensorError, OSError, ValueError) as exc:
        # A pickle (or anything else) put in place of the weights lands here: it is never unpickled.
        raise HeadError(f"{path} is not a valid safetensors file ({exc}); retrain the head") from exc


__all__ = ["EmotionHead", "HeadConfig", "HeadError", "TrainingSettings", "ZeroShotPrior", "build_net",
           "load_label_config"]
