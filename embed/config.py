"""The embed job's settings, in one frozen dataclass: `embed_source(**options)`, the engines and the CLI's
`embed` options read their defaults from here. Importing this costs nothing (no torch)."""
from __future__ import annotations

from dataclasses import dataclass

from emoreact.index import NEAR_DUPLICATE_THRESHOLD

from .identity import PRECISIONS, RUNTIMES
from .images import DEFAULT_MAX_PIXELS


OCR_MODES = ("auto", "on", "off")  # reading the words in images (embed/ocr.py): when the extra is there, always, never


@dataclass(frozen=True)
class EmbedConfig:
    """Knobs of the embedding job."""

    batch_size: int = 64  # images per model call
    workers: int = 2  # DataLoader processes decoding images; 0 decodes in the main process
    shard_size: int = 4096  # vectors per committed shard: the most work a crash can lose
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are skipped before decoding
    progress: bool = True  # show a tqdm bar with images/s
    fast_jpeg: bool | None = None  # batched JPEG decode + tensor preprocessing on the model's device;
    # None: on when the model runs on a GPU (nvJPEG), off on the CPU (PIL is as fast there)
    reduced_jpeg_decode: bool = True  # PIL path: decode JPEGs at 1/2-1/8 scale (libjpeg DCT scaling) while
    # the shorter side stays >= the model's input size; off decodes every pixel, as plain open_clip code does
    near_duplicate_threshold: float | None = NEAR_DUPLICATE_THRESHOLD  # images this close (cosine) share a split,
    # so a resized or re-encoded copy never sits in train while its twin is in test; None leaves splits alone
    wait: bool = False  # another job is writing the store: wait for it to finish instead of failing at once
    allow_readd: bool = False  # embed files whose content was removed from the store (`cli.py remove`) again
    index: str | None = None  # index kind: auto, flat, ivf or a FAISS factory string; None keeps the store's choice
    ocr: str = "off"  # read the words in each image (embed.ocr): off, auto (when the `ocr` extra is installed) or
    # on (it must be); off by default because reading costs far more than embedding on a CPU (docs/performance.md)
    runtime: str = "torch"  # what runs the model: torch, or onnx (ONNX Runtime on the CPU, embed/runtime.py)
    precision: str = "fp32"  # fp32, or int8 (with runtime onnx): faster on a CPU; its vectors get their own model id
    max_frames: int = 8  # a clip (animation or video) is stored as the pooled vector of at most this many frames
    clip_seconds: float = 10.0  # decoding one clip stops after this long (its frames so far are pooled): a job
    # has time for a whole clip, a server answering an upload does not (PredictorConfig.clip_seconds)
    decode_ahead: int = 2  # fast path on a GPU: batches decoded and preprocessed ahead, on their own CUDA stream,
    # while the model runs the current one; 0 decodes each batch in turn

    def clips(self):
        """Gives the clip decoding settings (embed.clips.ClipSettings) of these knobs."""
        from .clips import ClipSettings

        return ClipSettings(max_frames=self.max_frames, time_budget_s=self.clip_seconds)

    def __post_init__(self) -> None:
        if self.max_frames < 1 or self.clip_seconds <= 0:
            raise ValueError(f"max_frames must be at least 1 and clip_seconds above 0, got {self.max_frames} "
                             f"and {self.clip_seconds}")
        if self.ocr not in OCR_MODES:
            raise ValueError(f"ocr must be one of {OCR_MODES}, got {self.ocr!r}")
        if self.runtime not in RUNTIMES or self.precision not in PRECISIONS:
            raise ValueError(f"runtime must be one of {RUNTIMES} and precision one of {PRECISIONS}, "
                             f"got {self.runtime!r} and {self.precision!r}")
