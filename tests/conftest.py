"""Shared fixtures: a tiny random-weight open_clip model, synthetic labelled data, a built store and head."""
from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

import emoreact  # noqa: E402

if Path(emoreact.__file__).resolve().parent != ROOT:
    raise pytest.UsageError(f"the tests import emoreact from {Path(emoreact.__file__).parent}, not from this "
                            f"checkout ({ROOT}); install the checkout with `pip install -e .` (./run test does)")

from emoreact.embed import EmbedConfig, ModelSpec  # noqa: E402
from emoreact.heads import HeadConfig, load_label_config  # noqa: E402
from synthetic import COLOURS, PHRASES, make_manifest, make_post_manifest  # noqa: E402

TINY_MODEL = str(Path(__file__).with_name("tiny-clip.json"))
TINY = ModelSpec(model=TINY_MODEL, pretrained="none")
LABELS = list(COLOURS)
# The tiny model has random weights: all its vectors lie within cosine 0.93 of each other, so near-duplicate
# grouping would put every image whose split came from its hash into one split. Tests of grouping turn it on.
FAST_EMBED = EmbedConfig(batch_size=32, workers=0, shard_size=64, progress=False, near_duplicate_threshold=None)


def synthetic_items(count: int, seed: int, multi: float = 0.2) -> list[tuple[tuple[str, ...], str]]:
    """Gives (labels, split) pairs: mostly single-label, some two-label, a fixed 70/15/15 split."""
    rng = random.Random(seed)
    items = []
    for n in range(count):
        chosen = rng.sample(LABELS, 2 if rng.random() < multi else 1)
        split = ("train",) * 14 + ("val",) * 3 + ("test",) * 3
        items.append((tuple(l for l in LABELS if l in chosen), split[n % 20]))
    return items


@pytest.fixture(scope="session")
def label_config():
    return load_label_config()


@pytest.fixture(scope="session")
def backbone():
    from emoreact.embed import load_backbone

    return load_backbone(TINY, "cpu")


@pytest.fixture(scope="session")
def predictor(store_path, trained):
    """The predictor `serve` would load for the session store and MLP head; shared, so never closed by a test."""
    from emoreact.predictor import load

    return load(store_path, trained[0], device="cpu")


@pytest.fixture
def make_app(predictor):
    """Builds an app around the session's model, store and head (the loader is the seam tests replace)."""
    from emoreact.predictor import Predictor
    from emoreact.web import WebConfig, create_app

    def load(config):  # a predictor of the app's own that does not own (close) the shared store
        return Predictor(predictor.backbone, predictor.store, predictor.head, config.max_pixels)

    def build(**settings):
        return create_app(WebConfig(loader=load, **settings))
    return build


@pytest.fixture(scope="session")
def session_backbone_loader(backbone):
    """Gives a `WebConfig.loader` that opens the config's store and head as `serve` does but with the session's
    backbone: each app keeps its own store, head and state, and the model is loaded once per test run.

    (`serve` and the default loader are still tested as they are, by the tests that start them.)"""
    from emoreact.embed import same_model
    from emoreact.heads import EmotionHead
    from emoreact.index import Store
    from emoreact.predictor import Predictor
    from emoreact.web.batching import MicroBatcher

    def load(config):
        store = Store.open(config.store, nprobe=config.nprobe, candidates=config.candidates)
        if not same_model(store.model_id, backbone.spec):
            store.close()
            raise ValueError(f"the session backbone is {backbone.spec.model_id!r}, the store's {store.model_id!r}")
        head = EmotionHead.load(config.head, store.model_id, store.dim)
        if config.labels is not None:
            head.with_policy(load_label_config(config.labels))
        loaded = Predictor(backbone, store, head, config.max_pixels, owns_store=True, unsure_above=config.unsure_above)
        return loaded.batch_calls(MicroBatcher) if config.micro_batch else loaded  # None: off on the CPU, as serve
    return load


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """A CSV manifest of 640 synthetic labelled images."""
    return make_manifest(tmp_path_factory.mktemp("data"), synthetic_items(640, seed=1))


@pytest.fixture(scope="session")
def store_path(tmp_path_factory, dataset, label_config) -> Path:
    from emoreact import embed_source

    path = tmp_path_factory.mktemp("store") / "store"
    embed_source(dataset, path, TINY, labels=label_config, device="cpu", config=FAST_EMBED)
    return path


@pytest.fixture(scope="session")
def trained(tmp_path_factory, store_path, label_config):
    """(head folder, test metrics) of an MLP head trained on the session store."""
    from emoreact.pipeline import train_from_store

    out = tmp_path_factory.mktemp("head") / "head"
    _, metrics = train_from_store(store_path, out, HeadConfig(kind="mlp"), label_config, "cpu")
    return out, metrics


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """(folder, summary) of `cli.py demo --no-serve`: the bundled model's store, head and quality report."""
    import json

    from click.testing import CliRunner

    from emoreact import cli

    out = tmp_path_factory.mktemp("demo")
    result = CliRunner().invoke(cli.main, ["demo", "--no-serve", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return out, json.loads(result.output.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def linear_head(tmp_path_factory, store_path, label_config) -> Path:
    """A linear head without search on the session store: the quickest to train, and so to retrain."""
    from emoreact.pipeline import train_from_store

    out = tmp_path_factory.mktemp("linear") / "head"
    train_from_store(store_path, out, HeadConfig(kind="linear", search=False), label_config, "cpu")
    return out


# ---- posts: pictures with captions ------------------------------------------------------------

EMOTIONS = [label for label in LABELS if label not in ("neutral", "other")]


def _posts():
    """Pictures that show their label; neutral pictures whose caption carries it; happy pictures with a sad
    caption (both labels), spread over the three splits."""
    posts = []
    for n in range(14):
        split = "train" if n < 8 else "val" if n < 11 else "test"  # 21 validation posts with words
        for label in LABELS:
            posts.append(((label,), None, (label,), split))
        for label in EMOTIONS:
            posts.append((("neutral",), PHRASES[label][n % 2], (label,), split))
        posts.append((("happy",), PHRASES["sad"][n % 2], ("happy", "sad"), split))
    return posts


@pytest.fixture(scope="session")
def post_store(tmp_path_factory):
    """A store of captioned posts (tests/synthetic.py PHRASES): see `_posts`."""
    from emoreact import embed_source

    root = tmp_path_factory.mktemp("posts")
    embed_source(make_post_manifest(root / "source", _posts(), seed=3), root / "store", TINY, device="cpu",
                 config=FAST_EMBED)
    return root / "store"


@pytest.fixture(scope="session")
def post_heads(post_store, tmp_path_factory):
    """(post head, image-only head, their test metrics) trained on the post store."""
    from emoreact import train

    out = tmp_path_factory.mktemp("heads")
    fused = train(post_store, out / "post", head="linear", device="cpu")
    plain = train(post_store, out / "image", head="linear", device="cpu", inputs="image")
    return out / "post", out / "image", fused, plain


# ---- the fast tier ------------------------------------------------------------------------

SLOW_BECAUSE = ("browser", "ray", "subprocess", "long")  # pyproject.toml registers each, with what it means


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: "not slow" must see the marks added here
def pytest_collection_modifyitems(config, items):
    """Marks `slow` every test marked with a reason to be slow, and refuses `slow` set without a reason."""
    for item in items:
        reasons = [name for name in SLOW_BECAUSE if item.get_closest_marker(name)]
        if reasons:
            item.add_marker(pytest.mark.slow)
        elif item.get_closest_marker("slow"):
            raise pytest.UsageError(f"{item.nodeid} is marked slow without saying why: mark it with one of "
                                    f"{', '.join(SLOW_BECAUSE)} (conftest adds `slow` to those)")
