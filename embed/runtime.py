"""Running a backbone's towers through ONNX Runtime: the graph exported from the open_clip model, cached.

`--runtime onnx` exports the loaded model's own towers (`model.visual` for images, `encode_text` for
words) with `torch.onnx.export`: no second model definition, so the graph computes what torch does
(tests/test_runtime.py holds fp32 to cosine >= 0.9999 of torch). `--precision int8` then quantises
the graph's matrix products to 8 bits with ONNX Runtime's dynamic quantisation (cosine >= 0.99);
its vectors get their own model id (``+int8``), so they never mix with fp32 ones.

The graphs live in the user's cache folder (``$XDG_CACHE_HOME/emoreact/onnx``, default
``~/.cache/emoreact/onnx``), never beside the weights (which may be read-only), in one folder per
key: the weights (the model id carries a content hash for local files; bundled weights are hashed
here; random weights are named by their seed), the architecture's config, torch's and ONNX Runtime's
versions. Weights that change get a new key, so a new export. A graph is written to a temporary file
and renamed into place: a process that reads it sees a whole file, and two processes exporting at
once each rename a complete, identical graph.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch

from .identity import RANDOM_WEIGHTS, ModelLoadError, ModelSpec, _content_suffix

log = logging.getLogger(__name__)

GRAPH_FORMAT = 1  # bump when the export changes, so that cached graphs are exported again
_OPSET = 17
_EXPORTING = threading.Lock()  # torch.onnx.export keeps global state: one export at a time in a process
_INSTALL = 'pip install "emoreact[onnx]" (onnxruntime and onnx; the ocr extra brings onnxruntime too)'


def require_onnx():
    """Gives the onnxruntime module, or raises naming what to install."""
    try:
        import onnx  # noqa: F401  (torch.onnx.export and the quantiser need it)
        import onnxruntime
    except ImportError as exc:
        raise ModelLoadError(f"--runtime onnx needs onnxruntime and onnx ({exc.name} is not installed); "
                             f"{_INSTALL}, or use --runtime torch") from exc
    return onnxruntime


def cache_root() -> Path:
    """Gives the folder that holds exported graphs (``$XDG_CACHE_HOME/emoreact/onnx``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "emoreact" / "onnx"


def graph_folder(spec: ModelSpec, config: dict, weights_path: Path | None) -> Path:
    """Gives the cache folder for a model's graphs: one per weights, architecture and exporter.
    `weights_path` is the file the weights were read from, if any: its content hash joins the key."""
    import onnxruntime

    weights = spec.weights_id  # a tag names fixed weights; a local file's id carries its content hash
    if spec.pretrained == RANDOM_WEIGHTS:
        weights += "@seed:0"  # load_backbone seeds random weights with 0: the config decides them
    elif weights_path is not None:
        weights += _content_suffix(weights_path)  # bundled weights, a hub snapshot: named, not hashed, in the id
    material = json.dumps({"format": GRAPH_FORMAT, "weights": weights, "config": config, "torch": torch.__version__,
                           "onnxruntime": onnxruntime.__version__}, sort_keys=True)
    key = hashlib.sha256(material.encode()).hexdigest()[:16]
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in spec.model_name)[-60:]
    return cache_root() / f"{name}-{key}"


def cached_graph(folder: Path, tower: str, precision: str, module: torch.nn.Module, example: torch.Tensor) -> Path:
    """Gives the path of a tower's graph at `precision`, exporting (and quantising) it first if not cached."""
    fp32 = folder / f"{tower}-fp32.onnx"
    with _EXPORTING:
        if not fp32.is_file():
            log.info("exporting the %s tower to ONNX (once per weights): %s", tower, fp32)
            _atomic(fp32, lambda tmp: _export(module, example, tmp))
        if precision == "fp32":
            return fp32
        quantised = folder / f"{tower}-{precision}.onnx"
        if not quantised.is_file():
            log.info("quantising the %s tower to %s (once per weights): %s", tower, precision, quantised)
            _atomic(quantised, lambda tmp: _quantise(fp32, tmp))
        return quantised


class OnnxTower:
    """One tower as an ONNX Runtime session: (N, ...) array in, (N, D) float32 features out (not normalised)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        ort = require_onnx()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # torch's thread count is the process's setting (a Ray worker lowers it): the session follows it
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        # No busy-waiting between calls: on a 2-core box a spinning pool takes the cores that decoding, the
        # index search and the other requests need (ONNX Runtime spins by default)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = path
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: batch})[0]


class OnnxTowers:
    """A backbone's image and text towers through ONNX Runtime; the text graph is exported on first use."""

    def __init__(self, model: torch.nn.Module, spec: ModelSpec, config: dict, weights_path: Path | None,
                 image_size: tuple[int, int], context_length: int) -> None:
        self._model, self._precision = model, spec.precision
        self._folder = graph_folder(spec, config, weights_path)
        self._context_length = context_length
        example = torch.zeros(2, 3, *image_size)
        self.image = OnnxTower(cached_graph(self._folder, "visual", spec.precision, model.visual, example))
        self._text: OnnxTower | None = None
        self._text_lock = threading.Lock()

    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        """Gives (N, D) float32 features (not normalised) for a (N, 3, H, W) float batch."""
        pixels = batch.detach().to("cpu", torch.float32).numpy()
        return torch.from_numpy(self.image(np.ascontiguousarray(pixels)))

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Gives (N, D) float32 features (not normalised) for (N, context) int64 tokens."""
        with self._text_lock:
            if self._text is None:
                example = torch.zeros(2, self._context_length, dtype=torch.long)
                path = cached_graph(self._folder, "text", self._precision, _TextTower(self._model), example)
                self._text = OnnxTower(path)
        return torch.from_numpy(self._text(tokens.detach().to("cpu", torch.long).numpy()))


class _TextTower(torch.nn.Module):
    """open_clip's own `encode_text` as a module, so that `torch.onnx.export` can trace it."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)


def _export(module: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    import warnings

    # Gradients on: torch's fused attention fast path (used without them) has no ONNX export.
    with warnings.catch_warnings(), torch.inference_mode(False), torch.enable_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        example = example.clone()  # a tensor made in inference mode (encode_texts) cannot be traced
        torch.onnx.export(module, (example,), str(path), input_names=["input"], output_names=["features"],
                          dynamic_axes={"input": {0: "batch"}, "features": {0: "batch"}}, opset_version=_OPSET,
                          dynamo=False)


def _quantise(source: Path, path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantiser writes "<source>-inferred.onnx" beside its input and deletes it again: two processes
    # quantising one cached graph at once would delete each other's file. Each quantises its own copy.
    with tempfile.TemporaryDirectory(prefix=".quantise-", dir=path.parent) as private:
        copy = Path(private) / source.name
        shutil.copyfile(source, copy)
        # Matrix products only: they are a ViT's time; 8-bit convolutions (ConvInteger) run slower than fp32 ones.
        quantize_dynamic(str(copy), str(path), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])


def _atomic(path: Path, write) -> None:
    """Writes `path` through `write(tmp)` into a temporary file beside it, then renames it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".onnx", dir=path.parent)
    os.close(handle)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = ["OnnxTower", "OnnxTowers", "cache_root", "cached_graph", "graph_folder", "require_onnx"]
