"""Turning images into unit-norm CLIP embeddings: model loading, safe decoding, readers, the job."""
from .images import ALLOWED_FORMATS, ImageError, decode_image
from .job import EmbedConfig, EmbedReport, run_embed_job, split_for
from .models import (Backbone, ModelLoadError, ModelSpec, available_models, load_backbone,
                     resolve_device)
from .readers import READERS, Record, SourceError, detect_format, read_source

__all__ = ["ALLOWED_FORMATS", "ImageError", "decode_image", "EmbedConfig", "EmbedReport",
           "run_embed_job", "split_for", "Backbone", "ModelLoadError", "ModelSpec", "available_models",
           "load_backbone", "resolve_device", "READERS", "Record", "SourceError", "detect_format",
           "read_source"]
