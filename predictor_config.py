"""The settings of a loaded predictor, in one frozen dataclass that `emoreact.load` and the server share.

`emoreact.load(store, head, config, **options)` reads them; the web app's `WebConfig` extends them, so
`serve`'s settings travel as one object from the command line to the store. Importing this costs nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

from emoreact.embed import DEFAULT_MAX_PIXELS
from emoreact.embed.config import OCR_MODES
from emoreact.embed.identity import PRECISIONS, RUNTIMES
from emoreact.heads.frames import POOLINGS
from emoreact.novelty import DEFAULT_UNSURE_ABOVE

if TYPE_CHECKING:
    from emoreact.labels import LabelConfig


@dataclass(frozen=True)
class PredictorConfig:
    """How a predictor loads and answers; every field has its one default here."""

    device: str = "auto"  # auto | cpu | cuda[:N]
    labels: Union[str, Path, "LabelConfig", None] = None  # another label config (TOML path or LabelConfig): swaps the emoji policy, same labels
    pretrained: str | None = None  # the store's (or head's) weights, if they moved since embedding
    model: str | None = None  # without a store: re-points the head's backbone at another model name or config
    max_pixels: int = DEFAULT_MAX_PIXELS  # per image, checked before decoding
    unsure_above: float = DEFAULT_UNSURE_ABOVE  # novelty at which a result is flagged unsure (emoreact.novelty)
    nprobe: int | None = None  # lists an approximate index probes per query; None: as tuned at build time
    candidates: int | None = None  # proposals re-ranked exactly per query; None: as tuned at build time
    runtime: str = "torch"  # what runs the model: torch, or onnx (ONNX Runtime on the CPU; same vectors at fp32)
    precision: str = "fp32"  # fp32, or int8 (with runtime onnx): must be the precision the store was embedded at
    ocr: str = "auto"  # read the words in uploads (embed.ocr): auto, when the head reads words and the `ocr`
    #                    extra is installed; on, always (the extra must be installed); off, never
    max_frames: int = 8  # a clip (animation or video) is judged by at most this many frames, chosen by time
    clip_seconds: float = 2.0  # decoding a clip stops after this long; the answer uses the frames decoded so far
    clip_pooling: str = "share"  # a clip's scores from its frames' (heads/frames.py, measured by `bench clips`):
    #                              share, each label's score held for 30% of its time; scores, their mean over
    #                              time; features, the score of the frames' mean vector

    def __post_init__(self) -> None:
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be at least 1, got {self.max_pixels}")
        if self.ocr not in OCR_MODES:
            raise ValueError(f"ocr must be one of {OCR_MODES}, got {self.ocr!r}")
        if self.runtime not in RUNTIMES or self.precision not in PRECISIONS:
            raise ValueError(f"runtime must be one of {RUNTIMES} and precision one of {PRECISIONS}, "
                             f"got {self.runtime!r} and {self.precision!r}")
        if self.max_frames < 1 or self.clip_seconds <= 0:
            raise ValueError(f"max_frames must be at least 1 and clip_seconds above 0, got {self.max_frames} "
                             f"and {self.clip_seconds}")
        if self.clip_pooling not in POOLINGS:
            raise ValueError(f"clip_pooling must be one of {POOLINGS}, got {self.clip_pooling!r}")
        if not 0 < self.unsure_above <= 1:
            raise ValueError(f"unsure_above must be in (0, 1], got {self.unsure_above}")


__all__ = ["PredictorConfig"]
