"""EmoReact: emotions and emoji reactions for social-media images, from frozen CLIP features.

The public Python API is what this module lists in `__all__`; nothing else is promised::

    import emoreact

    clf = emoreact.load(store="runs/fi", head="runs/fi-head")  # head only: emoreact.load(head="runs/fi-head")
    clf.predict("photo.jpg")                   # one result dict; also bytes, a PIL image, or a list of them
    for result in clf.predict_many(paths, batch_size=64):
        ...
    emoreact.embed_source("photos/", store="runs/p", model="ViT-B-32", pretrained="laion2b_s34b_b79k")
    emoreact.train(store="runs/p", out="runs/p-head", head="linear")
    emoreact.evaluate(store="runs/p", head="runs/p-head", split="test")
    emoreact.score(store="runs/p", head="runs/p-head", out="preds.parquet")  # every stored image, no re-embedding
    emoreact.relabel(store="runs/p", manifest="fixes.csv")   # labels by path or sha256, no re-embedding

The names load lazily, so `import emoreact` stays fast and does not import torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from emoreact.lazy import lazy_exports  # absolute: pytest may import this file outside the package

__version__ = "0.3.0"  # the one place the version lives; pyproject.toml and every manifest read it

# public name -> the module that defines it
_PUBLIC = {
    "load": "emoreact.predictor",
    "embed_source": "emoreact.pipeline",
    "train": "emoreact.pipeline",
    "evaluate": "emoreact.pipeline",
    "score": "emoreact.scoring",
    "relabel": "emoreact.pipeline",
    "Predictor": "emoreact.predictor",
    "EmbedConfig": "emoreact.embed",
    "EmbedReport": "emoreact.embed",
    "HeadConfig": "emoreact.heads",
    "LabelConfig": "emoreact.labels",
    "load_label_config": "emoreact.labels",
    # the errors a caller catches; each message names the problem and the fix
    "StoreError": "emoreact.index",
    "ModelLoadError": "emoreact.embed",
    "ImageError": "emoreact.embed",
    "SourceError": "emoreact.embed",
    "HeadError": "emoreact.heads",
    "ConfigError": "emoreact.labels",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _PUBLIC, globals())
__all__ = ["__version__", *__all__]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time `__getattr__` imports on first use
    from .embed import EmbedConfig, EmbedReport, ImageError, ModelLoadError, SourceError
    from .heads import HeadConfig, HeadError
    from .index import StoreError
    from .labels import ConfigError, LabelConfig, load_label_config
    from .pipeline import embed_source, evaluate, relabel, train
    from .scoring import score
    from .predictor import Predictor, load
