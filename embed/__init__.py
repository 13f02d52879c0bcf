"""Turning images into unit-norm CLIP embeddings: model loading, safe decoding (stills and clips), readers, the
job and its engines; reading the words in images (OCR, the `ocr` extra)."""
from typing import TYPE_CHECKING

from emoreact.lazy import lazy_exports

_EXPORTS = {  # public name -> the module that defines it (imported on first use; see emoreact/lazy.py)
    "ALLOWED_FORMATS": "images",
    "DEFAULT_MAX_PIXELS": "images",
    "ImageError": "images",
    "decode_image": "images",
    "decode_pil": "images",
    "Clip": "clips",
    "ClipSettings": "clips",
    "decode_media": "clips",
    "is_clip": "clips",
    "EmbedConfig": "config",
    "EmbedReport": "job",
    "run_embed_job": "job",
    "split_for": "job",
    "ENGINES": "engines",
    "Engine": "engines",
    "engine_for": "engines",
    "run_engine": "engines",
    "DEFAULT_MODEL": "identity",
    "DEFAULT_PRETRAINED": "identity",
    "ModelLoadError": "identity",
    "ModelSpec": "identity",
    "same_model": "identity",
    "PRECISIONS": "identity",
    "RUNTIMES": "identity",
    "precision_hint": "identity",
    "Backbone": "models",
    "available_models": "models",
    "default_pretrained": "models",
    "load_backbone": "models",
    "resolve_device": "models",
    "EngineError": "emoreact.rayutil",
    "RayConfig": "emoreact.rayutil",
    "require_ray": "emoreact.rayutil",
    "OcrLine": "ocr",
    "OcrReader": "ocr",
    "OcrResult": "ocr",
    "OcrSettings": "ocr",
    "OcrUnavailable": "ocr",
    "ocr_reader": "ocr",
    "READERS": "readers",
    "Record": "readers",
    "SourceError": "readers",
    "detect_format": "readers",
    "read_source": "readers",
    "source_root": "readers",
    "MAX_CAPTION_CHARS": "texts",
    "clean_caption": "texts",
    "has_words": "texts",
    "ocr_text": "texts",
    "text_vectors": "texts",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:  # what type checkers and IDEs see
    from emoreact.rayutil import EngineError, RayConfig, require_ray

    from .engines import ENGINES, Engine, engine_for, run_engine
    from .identity import (DEFAULT_MODEL, DEFAULT_PRETRAINED, PRECISIONS, RUNTIMES, ModelLoadError, ModelSpec,
                           precision_hint, same_model)
    from .clips import Clip, ClipSettings, decode_media, is_clip
    from .images import ALLOWED_FORMATS, DEFAULT_MAX_PIXELS, ImageError, decode_image, decode_pil
    from .config import EmbedConfig
    from .job import EmbedReport, run_embed_job, split_for
    from .ocr import OcrLine, OcrReader, OcrResult, OcrSettings, OcrUnavailable, ocr_reader
    from .models import Backbone, available_models, default_pretrained, load_backbone, resolve_device
    from .readers import READERS, Record, SourceError, detect_format, read_source, source_root
    from .texts import MAX_CAPTION_CHARS, clean_caption, has_words, ocr_text, text_vectors
