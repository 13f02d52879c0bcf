"""Emotion heads over CLIP vectors, the label config and the emoji policy."""
from emoreact.labels import DEFAULT_LABELS_PATH, ConfigError, LabelConfig, LabelSpec, load_label_config, parse_label_config
from .calibration import expected_calibration_error, fit_temperature
from .estimator import LinearHead, MLPHead
from .losses import detect_task
from .metrics import decide, report, tune_thresholds
from .model import EmotionHead, HeadConfig, HeadError
from .plots import write_plots
from .policy import emoji_policy, rank_reactions
from .train import calibrate_prior, fit_head, zero_shot_head
from .zeroshot import label_text_embeddings

# FI's and EmoSet's own 8 Mikels classes, each with an emoji policy: for numbers comparable with
# published top-1 accuracy on those sets.
MIKELS_LABELS_PATH = DEFAULT_LABELS_PATH.with_name("labels-mikels.toml")

__all__ = ["DEFAULT_LABELS_PATH", "MIKELS_LABELS_PATH", "ConfigError", "LabelConfig", "LabelSpec", "load_label_config",
           "parse_label_config", "expected_calibration_error", "fit_temperature", "LinearHead", "MLPHead",
           "detect_task", "decide", "report", "tune_thresholds", "write_plots", "EmotionHead", "HeadConfig",
           "HeadError", "emoji_policy", "rank_reactions", "calibrate_prior", "fit_head", "zero_shot_head", "label_text_embeddings"]
