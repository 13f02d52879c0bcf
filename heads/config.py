"""Head settings and head kinds, each written once; importing this costs nothing (no torch).

`KINDS` is the one table of head kinds: a name -> its own settings dataclass and the module that
builds and fits it (that module gives `layers(config, dim, num_labels)` and `fit(head, inputs)`, as
heads/linear.py and heads/mlp.py do). Adding a kind is its module plus its settings and its line here.
`HeadConfig` is every kind's settings and the shared `TrainingSettings`, flat, so that
`HeadConfig(kind="mlp", epochs=50)`, `train(..., epochs=50)`, the CLI's options and a saved head's
manifest all name a setting by its name, and its default is written once, in the part that declares it.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

TASKS = ("auto", "single", "multi")
INPUTS = ("auto", "image")  # what a head reads: auto, a post's words too when the store has them; image only
LOSSES = ("bce", "weighted_bce", "focal")  # single-label: cross-entropy, class-weighted unless bce
SCHEDULES = ("cosine", "step", "plateau", "none")
# L2 strengths (the loss is a mean over images): 8 values, strong to weak, 10x apart.
DEFAULT_L2_GRID = (1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7)
# MLP (hidden, dropout) pairs: the default first (it wins ties), half and twice its width, and the
# wide layer heavily regularised.
MLP_GRID = ((512, 0.1), (256, 0.1), (1024, 0.1), (1024, 0.5))


@dataclass(frozen=True)
class TrainingSettings:
    """The settings every trained head kind shares: task, loss, search, calibration, prior, sample."""

    task: str = "auto"  # auto | single (softmax, cross-entropy) | multi (sigmoid); auto: single when
    #                     every labelled image has exactly one label
    loss: str = "weighted_bce"  # bce | weighted_bce | focal; single-label: cross-entropy, class-weighted
    #                             unless bce (see heads/losses.py)
    focal_gamma: float = 2.0  # focal loss focusing parameter
    search: bool = True  # choose the kind's regularisation on validation (linear: L2; MLP: width/dropout)
    calibrate: bool = True  # fit a temperature on validation so scores read as probabilities
    zero_shot_prior: bool = False  # initialise/regularise/blend with CLIP text-prompt embeddings
    seed: int = 0  # makes training reproducible (and the store sample below)
    # Training from a store (emoreact.trainset): the most labelled training images the head is fitted
    # on. Past it, each label keeps at most as many images as keeps the total under the cap (seeded
    # sample by image id); None keeps them all. 500k x 512 float32 is 1 GiB: the cap is what bounds
    # the memory of `train` on a store of any size (docs/usage.md, "Train and evaluate a head").
    max_train_rows: int | None = 500_000
    max_val_rows: int | None = 100_000  # the most validation images, sampled uniformly; None keeps all
    inputs: str = "auto"  # auto: a post head (heads/fusion.py) when the store holds enough posts with words
    #                       (a caption or text read in the image), else image only; image: image only

    def __post_init__(self) -> None:
        if self.inputs not in INPUTS:
            raise ValueError(f"unknown inputs {self.inputs!r}; choose one of {INPUTS}")
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {TASKS}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose bce, weighted_bce or focal")
        for name in ("max_train_rows", "max_val_rows"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}={value!r} must be a whole number of images >= 1, or None for no cap")


@dataclass(frozen=True)
class LinearSettings:
    """The linear head's own settings (heads/linear.py)."""

    l2: float = 1e-3  # L2 strength when `search` is off (loss is a mean over images)
    l2_grid: tuple[float, ...] = DEFAULT_L2_GRID  # strengths tried with `search`, strong to weak
    l2_patience: int = 1  # strengths without a better validation score before the path stops
    max_iter: int = 200  # L-BFGS iterations per strength
    prior_l2: float = 1e-3  # strength of the pull towards the zero-shot prior when `search` is off

    def __post_init__(self) -> None:
        # JSON gives lists back; tuples keep the config hashable and comparable after a round trip.
        object.__setattr__(self, "l2_grid", tuple(float(v) for v in self.l2_grid))
        if not self.l2_grid or min(self.l2_grid) < 0:
            raise ValueError(f"l2_grid={self.l2_grid!r} needs at least one strength, each >= 0")


@dataclass(frozen=True)
class MLPSettings:
    """The MLP head's own settings (heads/mlp.py)."""

    hidden: int = 512  # hidden width (with `search`, the width the grid chose)
    dropout: float = 0.1  # dropout (with `search`, the dropout the grid chose)
    mlp_grid: tuple[tuple[int, float], ...] = MLP_GRID  # (hidden, dropout) pairs tried with `search`
    lr: float = 1e-2  # AdamW peak learning rate (inputs are standardised, so this is safe)
    weight_decay: float = 1e-4  # AdamW weight decay
    epochs: int = 200  # upper bound; early stopping usually ends sooner
    batch_size: int = 256  # vectors per optimiser step
    patience: int = 20  # epochs without a better validation macro-F1 before stopping
    schedule: str = "cosine"  # cosine | step | plateau | none
    warmup_epochs: int = 3  # linear warm-up before the cosine schedule

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose cosine, step, plateau or none")
        object.__setattr__(self, "mlp_grid", tuple((int(h), float(d)) for h, d in self.mlp_grid))
        if not self.mlp_grid:
            raise ValueError("mlp_grid needs at least one (hidden, dropout) pair, e.g. ((512, 0.1),)")


@dataclass(frozen=True)
class HeadKind:
    """A head kind: its own settings and the module that builds and fits it."""

    settings: type | None  # its settings dataclass (None: it has none of its own)
    module: str | None  # gives layers(config, dim, num_labels) and fit(head, FitInputs); None: nothing to train
    doc: str

    @property
    def trained(self) -> bool:
        """Whether the kind learns from labelled images (a zero-shot head reads only text prompts)."""
        return self.module is not None

    @property
    def layers(self) -> Callable:
        """Gives (config, D, L) -> the trainable layers that follow the fixed standardisation."""
        return importlib.import_module(self.module).layers

    @property
    def fit(self) -> Callable:
        """Gives (head, FitInputs) -> history; it trains head.net_ in place."""
        return importlib.import_module(self.module).fit


KINDS: dict[str, HeadKind] = {
    "linear": HeadKind(LinearSettings, "emoreact.heads.linear", "L-BFGS logistic regression over an L2 path"),
    "mlp": HeadKind(MLPSettings, "emoreact.heads.mlp", "one hidden layer, AdamW, early stopping"),
    "zeroshot": HeadKind(None, None, "CLIP text prompts only, no training"),
}
_KIND_SETTINGS = tuple(kind.settings for kind in KINDS.values() if kind.settings is not None)


def head_kind(name: str) -> HeadKind:
    """Gives the kind named `name`, or a ValueError naming the choices."""
    if name not in KINDS:
        raise ValueError(f"unknown head kind {name!r}; choose one of {tuple(KINDS)}")
    return KINDS[name]


@dataclass(frozen=True)
class _Kind:
    kind: str = "linear"  # a name of KINDS: linear | mlp | zeroshot (text prompts only, no training)


# The bases in reverse: a dataclass lists the fields of its last base first (kind, shared, linear, MLP).
@dataclass(frozen=True)
class HeadConfig(*reversed(_KIND_SETTINGS), TrainingSettings, _Kind):
    """Hyperparameters of a head and its training: its kind, the shared `TrainingSettings` and each kind's
    own settings (`LinearSettings`, `MLPSettings`), flat; a kind reads only its own."""

    def __post_init__(self) -> None:
        head_kind(self.kind)
        for part in (TrainingSettings, *_KIND_SETTINGS):
            part.__post_init__(self)

    @property
    def learns_from_labels(self) -> bool:
        """Whether this kind of head is trained on labelled images (a zero-shot head reads only text prompts)."""
        return head_kind(self.kind).trained


__all__ = ["HeadConfig", "HeadKind", "KINDS", "LinearSettings", "MLPSettings", "TrainingSettings", "head_kind"]
