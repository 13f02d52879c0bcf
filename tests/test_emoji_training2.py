"""The second-edition emoji CLIP's tools: variant grouping, captions kept off the test phrases,
feed augmentation, the loss with shared captions, and resuming training exactly."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from emoji_augment import FeedAug, feed_augment  # noqa: E402
from emoji_captions2 import load_phrases, normalise, phrase_captions  # noqa: E402
from emoji_corpus2 import group_key, slug  # noqa: E402
from train_emoji_clip import multi_positive_clip_loss  # noqa: E402
from train_emoji_clip2 import Recipe, positives_loss, train  # noqa: E402

KNOWN = {"1F575": "1F575", "1F9D1-200D-1F373": "1F9D1-200D-1F373", "1F44B": "1F44B",
         "1F468-200D-1F469-200D-1F467": "1F468-200D-1F469-200D-1F467"}


def test_skin_tone_and_gender_variants_join_their_base_emoji():
    assert group_key("1F575-FE0F-200D-2642-FE0F", KNOWN) == "1f575"          # man detective
    assert group_key("1F575-1F3FF-200D-2640-FE0F", KNOWN) == "1f575"         # woman detective, dark skin
    assert group_key("1F469-1F3FC-200D-1F373", KNOWN) == "1f9d1-200d-1f373"  # woman cook -> cook
    assert group_key("1F44B-1F3FB", KNOWN) == "1f44b"
    assert group_key("1F468-200D-1F469-200D-1F467", KNOWN) == "1f468-200d-1f469-200d-1f467"  # a family
    assert group_key("1F9D1-1F3FB-200D-2764-200D-1F9D1-1F3FF", KNOWN, fallback="1f491") == "1f491"
    assert slug("face with tears of joy") == "face-with-tears-of-joy" and slug("piñata") == "pinata"


def test_phrase_captions_never_equal_a_test_phrase():
    banned = {normalise(p) for phrases in load_phrases("test").values() for p in phrases}
    assert "so sad" in banned  # the issue's own example is a test phrase
    train = load_phrases("train")
    caps = phrase_captions("crying face", ["cry", "sad", "tear"], train, banned)
    assert "i'm so sad" in caps and "feeling sad" in caps
    assert set(train["sad"]) <= set(caps)  # tagged sad: every sad training phrase
    assert not {normalise(c) for c in caps} & banned
    assert phrase_captions("bus", ["vehicle"], train, banned) == []


def test_feed_augment_gives_a_64px_rgb_picture_and_repeats_with_the_seed():
    drawing = np.zeros((64, 64, 4), np.uint8)
    drawing[16:48, 16:48] = (255, 0, 0, 255)
    cfg = FeedAug(max_canvas=128)
    pictures = [feed_augment(drawing, np.random.default_rng(3), cfg) for _ in range(2)]
    assert pictures[0].shape == (64, 64, 3) and pictures[0].dtype == np.uint8
    assert np.array_equal(pictures[0], pictures[1])
    many = [feed_augment(drawing, np.random.default_rng(s), cfg) for s in range(8)]
    assert len({p.tobytes() for p in many}) == 8


def test_positives_loss_is_the_group_loss_when_captions_differ():
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    group = torch.tensor([0, 0, 1, 1, 2, 3])
    scale = torch.tensor(10.0)
    ours = positives_loss(img, txt, scale, group[:, None] == group[None, :])
    assert torch.allclose(ours, multi_positive_clip_loss(img, txt, scale, group), atol=1e-6)


def _tiny_corpus(root: Path) -> None:
    rng = np.random.default_rng(0)
    groups = [f"1f60{i}" for i in range(8)]
    table = {g: {"names": [f"an emoji of face {i}", f"face {i}"], "phrases": ["so happy"] if i % 2 else []}
             for i, g in enumerate(groups)}
    (root / "captions.json").write_text(json.dumps(table))
    for style in ("a", "b", "c"):
        np.save(root / f"{style}.npy", rng.integers(0, 256, (len(groups), 64, 64, 4), dtype=np.uint8))
        (root / f"{style}.jsonl").write_text("".join(json.dumps({"hexcode": g, "group": g, "base": g}) + "\n"
                                                     for g in groups))


@pytest.mark.long  # builds a small open_clip model and runs 8 training steps (about 4 s)
def test_a_resumed_run_equals_a_run_that_never_stopped(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _tiny_corpus(data)
    config = tmp_path / "emoji-s2-tiny.json"
    config.write_text(json.dumps({"embed_dim": 16, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8},
                                  "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                                               "layers": 1}}))
    recipe = Recipe(styles=("a", "b", "c"), batch_size=6, styles_per_emoji=2, max_steps=4, aug=FeedAug(max_canvas=96))
    whole = train(recipe, data, tmp_path / "whole", config=config, threads=1)
    train(recipe, data, tmp_path / "split", config=config, threads=1, stop_at=2)
    with pytest.raises(SystemExit, match="--resume"):
        train(recipe, data, tmp_path / "split", config=config, threads=1)
    split = train(recipe, data, tmp_path / "split", config=config, threads=1, resume=True)
    assert [s["loss"] for s in split["steps"]] == [s["loss"] for s in whole["steps"]]
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    captions = data / "captions.json"
    captions.write_text(captions.read_text().replace("face 1", "face one"))
    with pytest.raises(SystemExit, match="other data"):
        train(recipe, data, tmp_path / "split", config=config, threads=1, resume=True)
    with pytest.raises(SystemExit, match="another recipe"):
        train(Recipe(**{**recipe.__dict__, "lr": 5e-4}), data, tmp_path / "split", config=config, threads=1,
              resume=True)
