"""Model identity: which backbone an artifact was built with, as one string.

`ModelSpec.model_id` is written into every store and head; loaders compare it with `same_model`.
Tags name themselves (``ViT-B-32/laion2b_s34b_b79k``); local weights are named by file name and
the first hex digits of their SHA-256 (``ViT-B-32/file:open_clip_pytorch_model.bin@sha256:0123456789ab``),
so two checkpoints that share a file name never pass for one another, and the same file on two
machines gets one id; a hub repository is named by its reference (``hf-hub:ORG/REPO``).
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
RANDOM_WEIGHTS = "none"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
HUB, LOCAL_DIR = "hf-hub:", "local-dir:"
_HASH_CHARS = 12  # hex digits of SHA-256 kept in a model id: 48 bits, plenty to tell checkpoints apart
RUNTIMES = ("torch", "onnx")  # what runs the towers: torch, or an ONNX graph exported from it (embed/runtime.py)
PRECISIONS = ("fp32", "int8")  # int8: weights quantised to 8 bits, run by ONNX Runtime; its vectors get their own id
_PRECISION_MARK = "+"  # ``ViT-B-32/laion2b_s34b_b79k+int8``: a precision other than fp32 is part of the id


class ModelLoadError(RuntimeError):
    """The backbone could not be built; the message says how to fix it."""


@dataclass(frozen=True)
class ModelSpec:
    """Which CLIP backbone to use."""

    model: str = DEFAULT_MODEL  # open_clip model name, or a path to a model-config JSON
    pretrained: str = DEFAULT_PRETRAINED  # tag, weights file/folder, local-dir:/hf-hub: form, or "none"
    runtime: str = "torch"  # what runs the towers (RUNTIMES); fp32 ONNX gives torch's vectors, so not in the id
    precision: str = "fp32"  # fp32 or int8 (ONNX Runtime only); int8 vectors differ, so it is in the id

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ModelLoadError(f"unknown runtime {self.runtime!r}; use {' or '.join(RUNTIMES)}")
        if self.precision not in PRECISIONS:
            raise ModelLoadError(f"unknown precision {self.precision!r}; use {' or '.join(PRECISIONS)}")
        if self.precision == "int8" and self.runtime != "onnx":
            raise ModelLoadError("precision int8 runs through ONNX Runtime (torch's own int8 was slower on the CPU, "
                                 "docs/performance.md); pass --runtime onnx with --precision int8")

    @property
    def hub(self) -> str | None:
        """Gives the ``hf-hub:``/``local-dir:`` reference that decides config and weights, if any."""
        for source in (self.pretrained, self.model):
            if source.startswith((HUB, LOCAL_DIR)):
                return source
        return None

    @property
    def model_name(self) -> str:
        """Gives the open_clip registry name (a config file's stem), or the hub/folder reference."""
        if self.hub is not None:
            return self.hub
        if self.model.endswith(".json"):
            return Path(self.model).stem
        return self.model

    @property
    def model_id(self) -> str:
        """Gives the identifier written into stores and heads, e.g. ``ViT-B-32/laion2b_s34b_b79k``,
        ``ViT-B-32/file:open_clip_pytorch_model.bin@sha256:0123456789ab`` or ``hf-hub:ORG/REPO``."""
        return self.weights_id + ("" if self.precision == "fp32" else _PRECISION_MARK + self.precision)

    @property
    def weights_id(self) -> str:
        """Gives the id of the weights alone, whatever the precision they run at."""
        if self.hub is not None and self.hub.startswith(HUB):
            return self.hub
        if self.hub is not None:
            folder = Path(self.hub[len(LOCAL_DIR):])
            return f"{LOCAL_DIR}{folder.name}{_content_suffix(weights_file(folder))}"
        source = self.pretrained
        if is_local_path(source):
            # A machine path would make the id differ between machines; name and content do not.
            source = "file:" + weights_file(Path(source)).name + _content_suffix(weights_file(Path(source)))
        return f"{self.model_name}/{source}"

    @property
    def legacy_model_id(self) -> str:
        """Gives the id that EmoReact 0.2 wrote for these weights (local files by file name only)."""
        if self.hub is not None or not is_local_path(self.pretrained) or self.precision != "fp32":
            return self.model_id
        return f"{self.model_name}/file:{Path(self.pretrained).name}"

    @classmethod
    def parse(cls, model_id: str) -> "ModelSpec":
        """Gives the spec back from a ``model/pretrained[+precision]`` id (inverse of `model_id` for tags);
        an int8 id gives the ONNX runtime, the one that runs int8."""
        precision = id_precision(model_id)
        if precision != "fp32":
            model_id = model_id[: -len(_PRECISION_MARK + precision)]
        runtime = "torch" if precision == "fp32" else "onnx"
        if model_id.startswith((HUB, LOCAL_DIR)):
            return cls(model=model_id, pretrained=model_id, runtime=runtime, precision=precision)
        name, sep, pretrained = model_id.rpartition("/")
        if not sep or not name:
            raise ModelLoadError(f"model id {model_id!r} is not of the form MODEL/PRETRAINED")
        return cls(model=name, pretrained=pretrained, runtime=runtime, precision=precision)


def id_precision(model_id: str) -> str:
    """Gives the precision a model id's vectors were computed at (fp32 unless the id ends in ``+int8``)."""
    for precision in PRECISIONS[1:]:
        if model_id.endswith(_PRECISION_MARK + precision):
            return precision
    return "fp32"


def precision_hint(stored_id: str, spec: ModelSpec) -> str:
    """Gives the fix when an artifact's vectors were computed at another precision than `spec`'s ("" when not):
    the --precision (and --runtime) that match, and --pretrained too when the weights differ as well."""
    stored = id_precision(stored_id)
    if stored == spec.precision:
        return ""
    runtime = "--runtime onnx " if stored != "fp32" else ""
    weights = stored_id.removesuffix(_PRECISION_MARK + stored) if stored != "fp32" else stored_id
    also = "" if weights == spec.weights_id else "the same --pretrained as at embed time and "
    return (f"; its vectors were computed at {stored}, these would be {spec.precision}, and two precisions are "
            f"never mixed: pass {also}{runtime}--precision {stored} (precision={stored!r}), or embed again")


def same_model(stored_id: str, spec: ModelSpec) -> bool:
    """Tells whether an artifact's model id names the weights of `spec`. An id from before content
    hashes (a local file named by file name only) matches with a warning: it cannot be verified."""
    if stored_id == spec.model_id:
        return True
    if "@sha256:" in stored_id or stored_id != spec.legacy_model_id:
        return False
    log.warning("%r names its weights by file name only (written by an older EmoReact), so EmoReact cannot check "
                "they are the weights given now (%r); re-embed the store to record their content hash",
                stored_id, spec.model_id)
    return True


def is_local_path(source: str) -> bool:
    if source in ("", RANDOM_WEIGHTS) or source.startswith((HUB, LOCAL_DIR)):
        return False
    return os.sep in source or Path(source).suffix in WEIGHT_SUFFIXES or Path(source).exists()


def weights_file(path: Path) -> Path:
    """Gives the weights file a local source names: the file itself, or the first one in a folder."""
    if path.is_dir():
        found = [p for p in sorted(path.iterdir()) if p.suffix in WEIGHT_SUFFIXES]
        return found[0] if found else path
    return path


_hashes: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256 hex: hash a checkpoint once
_hashes_lock = threading.Lock()


def _content_suffix(path: Path) -> str:
    """Gives ``@sha256:`` and the first hex digits of the file's SHA-256; "" when it cannot be read
    (loading it then fails with the reason)."""
    try:
        stat = path.stat()
        if not path.is_file():
            return ""
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        with _hashes_lock:
            if key not in _hashes:
                with path.open("rb") as handle:
                    _hashes[key] = hashlib.file_digest(handle, "sha256").hexdigest()
            return f"@sha256:{_hashes[key][:_HASH_CHARS]}"
    except OSError:
        return ""
