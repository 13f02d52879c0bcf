"""Emotion heads over CLIP vectors, the label config and the emoji policy."""
from typing import TYPE_CHECKING

from emoreact.labels import DEFAULT_LABELS_PATH
from emoreact.lazy import lazy_exports

# FI's and EmoSet's own 8 Mikels classes, each with an emoji policy: for numbers comparable with
# published top-1 accuracy on those sets.
MIKELS_LABELS_PATH = DEFAULT_LABELS_PATH.with_name("labels-mikels.toml")

_EXPORTS = {  # public name -> the module that defines it (imported on first use; see emoreact/lazy.py)
    "DEFAULT_LABELS_PATH": "emoreact.labels",
    "ConfigError": "emoreact.labels",
    "LabelConfig": "emoreact.labels",
    "LabelSpec": "emoreact.labels",
    "load_label_config": "emoreact.labels",
    "parse_label_config": "emoreact.labels",
    "expected_calibration_error": "calibration",
    "fit_temperature": "calibration",
    "LinearHead": "estimator",
    "KINDS": "config",
    "head_kind": "config",
    "LinearSettings": "config",
    "MLPSettings": "config",
    "TrainingSettings": "config",
    "MLPHead": "estimator",
    "detect_task": "losses",
    "decide": "metrics",
    "report": "metrics",
    "tune_thresholds": "metrics",
    "EmotionHead": "model",
    "HeadConfig": "config",
    "HeadError": "model",
    "write_plots": "plots",
    "emoji_policy": "policy",
    "rank_reactions": "policy",
    "calibrate_prior": "train",
    "fit_head": "train",
    "add_text_channel": "train",
    "Fusion": "fusion",
    "MIN_POSTS": "fusion",
    "deciding_channel": "fusion",
    "POOLINGS": "frames",
    "FrameScores": "frames",
    "frame_scores": "frames",
    "zero_shot_head": "train",
    "label_text_embeddings": "zeroshot",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
__all__ += ["MIKELS_LABELS_PATH"]

if TYPE_CHECKING:  # what type checkers and IDEs see
    from emoreact.labels import ConfigError, LabelConfig, LabelSpec, load_label_config, parse_label_config
    from .calibration import expected_calibration_error, fit_temperature
    from .estimator import LinearHead, MLPHead
    from .config import KINDS, HeadConfig, LinearSettings, MLPSettings, TrainingSettings, head_kind
    from .losses import detect_task
    from .metrics import decide, report, tune_thresholds
    from .model import EmotionHead, HeadError
    from .plots import write_plots
    from .policy import emoji_policy, rank_reactions
    from .frames import POOLINGS, FrameScores, frame_scores
    from .fusion import MIN_POSTS, Fusion, deciding_channel
    from .train import add_text_channel, calibrate_prior, fit_head, zero_shot_head
    from .zeroshot import label_text_embeddings
