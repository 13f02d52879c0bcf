"""Turning images into unit-norm CLIP embeddings: model loading, safe decoding, readers, the job."""
from .images import ALLOWED_FORMATS, DEFAULT_MAX_PIXELS, ImageError, decode_image, decode_pil
from .job import EmbedConfig, EmbedReport, run_embed_job, split_for
from .identity import DEFAULT_MODEL, DEFAULT_PRETRAINED, ModelLoadError, ModelSpec, same_model
from .models import Backbone, available_models, default_pretrained, load_backbone, resolve_device
from .parallel import run_sharded_embed_job
from .ray_engine import EngineError, RayConfig, RayIndexBuilder, require_ray, run_ray_embed_job
from .readers import READERS, Record, SourceError, detect_format, read_source, source_root

__all__ = ["ALLOWED_FORMATS", "DEFAULT_MAX_PIXELS", "ImageError", "decode_image", "decode_pil", "EmbedConfig",
           "EmbedReport", "run_embed_job", "run_sharded_embed_job", "EngineError", "RayConfig",
           "RayIndexBuilder", "require_ray", "run_ray_embed_job", "split_for", "DEFAULT_MODEL",
           "DEFAULT_PRETRAINED", "Backbone", "ModelLoadError", "ModelSpec", "available_models", "default_pretrained",
           "load_backbone", "resolve_device", "same_model", "READERS", "Record", "SourceError", "detect_format",
           "read_source", "source_root"]
