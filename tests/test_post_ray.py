"""The Ray engine carries a post's words: its decode tasks pass the caption on (and the words they read), its
model workers encode them with the text tower, and the driver's items hand them to the writer. In this
process, with no cluster: the parts a Ray job runs, called directly."""
import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import TINY
from emoreact.embed import text_vectors
from emoreact.embed.ray_engine import _STATUS_OK, _decode_batch, _Encoder, _HashSet, _items, _portable
from synthetic import draw

FP16_STEP = 2e-3


@pytest.fixture
def worker_node(monkeypatch):
    context = SimpleNamespace(get_node_id=lambda: "node-a")
    monkeypatch.setitem(sys.modules, "ray", SimpleNamespace(get_runtime_context=lambda: context))


def test_captions_go_from_the_decode_task_through_the_worker_to_the_writers_items(tmp_path, backbone, worker_node):
    paths = []
    for n in range(3):
        draw(("happy",), seed=n).save(tmp_path / f"{n}.png")
        paths.append(str(tmp_path / f"{n}.png"))
    captions = ["we lost him yesterday", "", "eww gross"]
    batch = {"i": np.arange(3, dtype=np.int64), "path": np.array(paths), "caption": np.array(captions)}
    columns = _decode_batch(batch, _HashSet(set()), backbone.transform, 10_000_000, None)
    pixels = np.empty(3, dtype=object)
    pixels[:] = columns["pixels"]
    out = _Encoder(_portable(TINY), "cpu", None, backbone.dim)({**columns, "pixels": pixels})
    assert list(out["status"]) == [_STATUS_OK] * 3 and out["has_words"].tolist() == [True, False, True]
    expected = text_vectors(backbone.encode_texts, backbone.dim, ["we lost him yesterday", None, "eww gross"],
                            [None] * 3)
    assert np.abs(out["text_vector"].astype(np.float32) - expected).max() <= FP16_STEP
    items = _items(out)
    assert all("ocr" not in item for item in items)  # OCR off: nothing read


def test_words_read_by_a_decode_task_reach_the_writers_items(tmp_path, backbone, worker_node, monkeypatch):
    import emoreact.embed.ray_engine as ray_engine

    line = SimpleNamespace(to_json=lambda: {"text": "SO SAD", "score": 0.99, "box": [[0, 0], [9, 0], [9, 9], [0, 9]]})
    reader = SimpleNamespace(read=lambda image: SimpleNamespace(lines=[line]))
    monkeypatch.setattr(ray_engine, "ocr_reader", lambda mode: reader if mode == "on" else None)
    draw(("neutral",), seed=9).save(tmp_path / "meme.png")
    batch = {"i": np.arange(1, dtype=np.int64), "path": np.array([str(tmp_path / "meme.png")]), "caption": np.array([""])}
    columns = _decode_batch(batch, _HashSet(set()), backbone.transform, 10_000_000, None, ocr="on")
    assert json.loads(columns["ocr"][0])[0]["text"] == "SO SAD"
    pixels = np.empty(1, dtype=object)
    pixels[:] = columns["pixels"]
    out = _Encoder(_portable(TINY), "cpu", None, backbone.dim)({**columns, "pixels": pixels})
    assert out["has_words"].tolist() == [True]
    assert _items(out)[0]["ocr"][0]["text"] == "SO SAD"


def test_a_clip_goes_through_the_decode_task_and_the_worker_as_its_pooled_vector(tmp_path, backbone, worker_node):
    import io

    import torch

    from emoreact.embed.clips import ClipSettings
    from emoreact.embed.frames import encode_pooled
    from emoreact.embed.job import read_item

    frames = [draw(("neutral",), seed=0)] + [draw(("sad",), seed=n) for n in range(1, 4)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=[300, 100, 100, 100], loop=0)
    (tmp_path / "clip.gif").write_bytes(out.getvalue())
    draw(("happy",), seed=9).save(tmp_path / "still.png")
    paths = [str(tmp_path / "still.png"), str(tmp_path / "clip.gif")]
    batch = {"i": np.arange(2, dtype=np.int64), "path": np.array(paths), "caption": np.array(["", ""])}
    columns = _decode_batch(batch, _HashSet(set()), backbone.transform, 10_000_000, None, clips=ClipSettings())
    assert [p.shape[0] for p in columns["pixels"]] == [1, 4]  # one (F, 3, H, W) column for stills and clips
    pixels = np.empty(2, dtype=object)
    pixels[:] = columns["pixels"]
    result = _Encoder(_portable(TINY), "cpu", None, backbone.dim)({**columns, "pixels": pixels})
    items = _items(result)
    assert "clip" not in items[0] and items[1]["clip"] == {"format": "GIF", "duration_ms": 600, "frame_count": 4,
                                                           "frames_used": 4}
    local = [read_item(n, tmp_path / name, set(), backbone.transform, 10_000_000, None) for n, name in
             enumerate(("still.png", "clip.gif"))]
    expected = encode_pooled(lambda x: backbone.encode_images(x).numpy(), [item["tensor"] for item in local],
                             [item.get("weights") for item in local])
    assert np.abs(result["vector"].astype(np.float32) - expected).max() <= FP16_STEP
    assert torch.is_tensor(local[1]["tensor"]) and local[1]["tensor"].shape[0] == 4
