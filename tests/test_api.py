"""The public Python API: `emoreact.load(...).predict(...)`, `predict_many`, `embed_source`, `train`."""
from __future__ import annotations

import io
import subprocess
import sys

import pytest
from PIL import Image

import emoreact
from conftest import TINY
from synthetic import draw


@pytest.fixture(scope="module")
def clf(store_path, trained):
    return emoreact.load(store=store_path, head=trained[0], device="cpu")


def _photo(seed: int = 5, size: tuple[int, int] = (640, 480), orientation: int | None = 6) -> bytes:
    """A JPEG far larger than the tiny model's 64 px input (so reduced decoding applies), turned by EXIF."""
    image = draw(("sad",), seed=seed).resize(size)
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, exif=exif.tobytes())
    return buffer.getvalue()


def _without_name(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "image"}


def test_public_api_lists_what_it_promises_and_nothing_shares_a_subpackage_name():
    for name in emoreact.__all__:
        assert getattr(emoreact, name) is not None
    assert {"load", "embed_source", "train", "evaluate", "Predictor", "StoreError", "ModelLoadError",
            "ImageError", "__version__"} <= set(emoreact.__all__)
    assert not {"embed", "heads", "index", "web", "cli", "demo", "bench"} & set(emoreact.__all__)


def test_importing_emoreact_is_cheap_and_gives_the_version():
    code = "import sys, emoreact; print(emoreact.__version__, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    assert out == [emoreact.__version__, "False"]


def test_the_cli_answers_help_and_its_packages_give_names_without_importing_torch():
    code = ("import sys, emoreact.cli\n"
            "from emoreact.embed import DEFAULT_MODEL, ImageError\n"
            "from emoreact.index import StoreError\n"
            "from emoreact.heads import MIKELS_LABELS_PATH, ConfigError\n"
            "print('torch' in sys.modules, 'open_clip' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    assert out == ["False", "False"]
    from emoreact.heads import HeadError, fit_head  # the names load on first use
    from emoreact.heads.model import HeadError as defined

    assert HeadError is defined and callable(fit_head)


def test_predict_gives_the_same_result_for_a_path_bytes_and_a_pil_image(clf, tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(_photo())
    by_path = clf.predict(path)
    by_string = clf.predict(str(path))
    by_bytes = clf.predict(path.read_bytes())
    by_pil = clf.predict(Image.open(path))
    assert by_path["image"] == str(path) and by_bytes["image"] == "<bytes>"
    assert _without_name(by_path) == _without_name(by_string) == _without_name(by_bytes) == _without_name(by_pil)
    assert set(by_path) == {"image", "predicted_emotions", "allowed_emojis", "blocked_emojis", "emotion_scores",
                            "reaction_scores", "novelty", "unsure", "neighbours", "neighbours_exact", "text",
                            "channels", "decided_by"}
    assert by_path["neighbours_exact"] is True  # the test store's index is flat: its neighbours are exact


def test_every_entry_decodes_alike_upright_and_at_reduced_scale(clf, tmp_path):
    """The one decode path: EXIF orientation applied, a big JPEG decoded at the scale the model needs."""
    name, upright = clf.decode(_photo(orientation=6))
    assert upright.size[1] > upright.size[0]  # turned: 480 wide, 640 high
    assert min(upright.size) < 480  # DCT-scaled decode, not the full picture
    assert clf.decode(Image.open(io.BytesIO(_photo(orientation=6))))[1].tobytes() == upright.tobytes()


def test_a_list_gives_a_list_and_a_bad_image_in_it_an_error_record(clf, tmp_path):
    good = tmp_path / "good.jpg"
    good.write_bytes(_photo(orientation=None))
    results = clf.predict([good, b"not an image", tmp_path / "missing.jpg"])
    assert [("error" in r) for r in results] == [False, True, True]
    assert results[1]["kind"] == "invalid" and "not an image" in results[1]["error"]
    assert "cannot read" in results[2]["error"] and results[2]["image"] == str(tmp_path / "missing.jpg")


def test_one_bad_image_raises_a_clear_image_error(clf):
    with pytest.raises(emoreact.ImageError, match="not an image"):
        clf.predict(b"GIF? no, text")
    with pytest.raises(TypeError, match="pass a file path, encoded bytes or a PIL image"):
        clf.predict(42)


def test_head_only_predictor_gives_the_same_scores_without_neighbours(clf, trained):
    head_only = emoreact.load(head=trained[0], device="cpu")
    assert head_only.store is None
    photo = _photo(seed=9)
    alone = head_only.predict(photo)
    assert "neighbours" not in alone and "neighbours_exact" not in alone
    assert alone["novelty"] is None and alone["unsure"] is None  # novelty is measured against a store
    with_store = clf.predict(photo)
    assert alone == {**{k: v for k, v in with_store.items() if k not in ("neighbours", "neighbours_exact")},
                     "novelty": None, "unsure": None}


def test_head_only_predictor_with_other_weights_is_refused_naming_the_fix(trained):
    with pytest.raises(emoreact.ModelLoadError, match="pretrained"):
        emoreact.load(head=trained[0], device="cpu", model="RN50", pretrained="none")


def test_load_without_a_head_says_what_to_pass():
    with pytest.raises(ValueError, match="head="):
        emoreact.load(store="runs/x")


def test_predict_many_streams_in_batches_and_keeps_order(clf):
    pulled = []

    def images(n: int):
        for i in range(n):
            pulled.append(i)
            yield _photo(seed=i, size=(96, 96), orientation=None) if i != 5 else b"broken"

    stream = clf.predict_many(images(10), batch_size=4, k=1)
    first = next(stream)
    assert len(pulled) == 4  # only the first batch was read to answer the first image
    rest = list(stream)
    assert len(pulled) == 10 and len(rest) == 9
    assert "error" in rest[4] and all("error" not in r for i, r in enumerate(rest) if i != 4)
    same_batch = [_photo(seed=i, size=(96, 96), orientation=None) for i in range(4)]
    assert first == clf.predict(same_batch, k=1)[0]


def test_embed_source_and_train_take_config_fields_as_keywords(dataset, tmp_path, label_config):
    report = emoreact.embed_source(dataset, tmp_path / "store", TINY, labels=label_config, device="cpu",
                                   batch_size=32, workers=0, shard_size=64, progress=False)
    assert report.added == 640
    metrics = emoreact.train(tmp_path / "store", tmp_path / "head", "linear", labels=label_config, device="cpu",
                             epochs=30, patience=5)
    assert metrics["split"] == "test" and metrics["macro_f1"] > 0.5
    assert emoreact.evaluate(tmp_path / "store", tmp_path / "head", split="val")["split"] == "val"
    with pytest.raises(TypeError, match="unknown option 'batchsize'"):
        emoreact.embed_source(dataset, tmp_path / "other", TINY, batchsize=3)


def test_load_takes_its_settings_as_one_object_and_names_an_unknown_one(store_path, trained):
    from emoreact.predictor_config import PredictorConfig

    with pytest.raises(TypeError, match="unknown option 'colour'"):
        emoreact.load(store_path, trained[0], colour="red")
    with pytest.raises(ValueError, match="unsure_above must be in"):
        PredictorConfig(unsure_above=1.5)
    with emoreact.load(store_path, trained[0], PredictorConfig(device="cpu", unsure_above=0.5), max_pixels=10**6) as p:
        assert (p.unsure_above, p.max_pixels) == (0.5, 10**6)
