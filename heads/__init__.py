"""Emotion heads over CLIP vectors, the label config and the emoji policy."""
from emoreact.labels import DEFAULT_LABELS_PATH, ConfigError, LabelConfig, LabelSpec, load_label_config, parse_label_config
from .metrics import decide, report, tune_thresholds, write_plots
from .model import EmotionHead, HeadConfig, HeadError
from .policy import emoji_policy
from .train import calibrate_prior, fit_head, zero_shot_head
from .zeroshot import label_text_embeddings

__all__ = ["DEFAULT_LABELS_PATH", "ConfigError", "LabelConfig", "LabelSpec", "load_label_config",
           "parse_label_config", "decide", "report", "tune_thresholds", "write_plots", "EmotionHead",
           "HeadConfig", "HeadError", "emoji_policy", "calibrate_prior", "fit_head", "zero_shot_head",
           "label_text_embeddings"]
