"""The web app's settings and the one function that loads what it serves."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from emoreact.predictor_config import PredictorConfig

if TYPE_CHECKING:
    from emoreact.predictor import Predictor

MiB = 1024 * 1024


def describe_size(n: int) -> str:
    """Gives a byte count as people read it: "32 MiB", "19.5 KiB", "512 bytes"."""
    for unit, scale in (("MiB", MiB), ("KiB", 1024)):
        if n >= scale:
            return f"{round(n / scale, 1):g} {unit}"
    return f"{n} bytes"


def load_predictor(config: "WebConfig") -> "Predictor":
    """Gives the predictor (backbone, store, head) named by the config, loaded once per app, its model
    calls micro-batched where the config says so (by default on a GPU only)."""
    from emoreact import predictor

    from .batching import MicroBatcher

    if config.store is None or config.head is None:
        raise ValueError("the web app needs both a store and a head; pass --store STORE --head HEAD")
    loaded = predictor.load(config.store, config.head, config)
    loaded.warm()  # the OCR models load now, not in the first request that has words to read
    batch = config.micro_batch if config.micro_batch is not None else loaded.backbone.device.type == "cuda"
    return loaded.batch_calls(MicroBatcher) if batch else loaded


@dataclass(frozen=True)
class WebConfig(PredictorConfig):
    """Everything `create_app` needs: the predictor's settings (inherited: device, labels, pretrained,
    max_pixels, unsure_above, nprobe, candidates) and the server's; host, port and threads live in `serve`."""

    store: Path | None = None  # embedding store folder (neighbours and thumbnails)
    head: Path | None = None  # trained head folder
    labels: Path | None = None  # another label config TOML: swaps the emoji policy, same labels
    micro_batch: bool | None = None  # run concurrent requests' model calls as one batch; None: on a GPU only
    max_upload_bytes: int = 32 * MiB  # whole request body; over it answers 413, also for chunked bodies
    max_files: int = 32  # images per request; more answers 413
    k_default: int = 5  # neighbours per image when the request names no k
    k_max: int = 100  # the largest k a request may ask for
    thumbnail_px: int = 256  # longest side of thumbnails
    thumbnail_cache: int = 1024  # thumbnails kept in memory (about 15 kB each)
    thumbnail_max_age: int = 86_400  # seconds browsers may reuse a thumbnail without asking
    api_keys: Path | None = None  # file of name:key[:admin] lines; feedback and admin endpoints need a key
    require_key_for_read: bool = False  # predict, neighbours, labels, thumbnails and /metrics need a key too
    feedback_per_minute: float = 30.0  # corrections one key may send a minute (and at once); more answers 429
    loader: Callable[["WebConfig"], "Predictor"] = load_predictor  # tests swap in their own

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("max_upload_bytes", "max_files", "k_max", "thumbnail_px"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.feedback_per_minute <= 0:
            raise ValueError(f"feedback_per_minute must be above 0, got {self.feedback_per_minute}")
        if not 0 <= self.k_default <= self.k_max:
            raise ValueError(f"k_default must be between 0 and k_max={self.k_max}, got {self.k_default}")
