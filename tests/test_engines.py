"""The embed engines are one table: `embed --engine` offers its names, an unknown name is refused before
anything is read, and an engine added to the table is run like the others, its store finished and its
report written by the end every job shares (`run_engine`)."""
import json

import numpy as np
import pytest
from PIL import Image

from conftest import FAST_EMBED, TINY
from emoreact.embed import ENGINES, EmbedReport, engine_for, load_backbone
from emoreact.embed.job import LocalEngine, read_item
from emoreact.embed.parallel import DevicesEngine
from emoreact.embed.writer import ShardWriter
from emoreact.index import Store


class MeanColourEngine:
    """A toy engine: an image's vector is its mean colour, no model; rows go through the job's writer."""

    def __init__(self, device, ray_config) -> None:
        self.device = device

    def backbone(self, spec):
        return load_backbone(spec, "cpu")  # names the model for the store and decodes; its model is not run

    def embed(self, records, store, backbone, config, known) -> EmbedReport:
        report = EmbedReport(engine="mean-colour")
        writer = ShardWriter(store, records, report, config.shard_size)
        items = [read_item(i, record.path, known, backbone.transform, config.max_pixels, None)
                 for i, record in enumerate(records)]
        good = writer.sort(items)
        vectors = np.zeros((len(good), backbone.dim), np.float32)
        for row, (_, item) in enumerate(good):
            vectors[row, :3] = item["tensor"].mean(dim=(1, 2)).numpy()
            vectors[row, 3] = 1.0
        writer.add(good, vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
        writer.flush()
        return report


@pytest.fixture
def source(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    for n in range(6):
        Image.new("RGB", (32, 32), (40 * n, 200 - 30 * n, 90)).save(folder / f"{n}.png")
    return folder


def test_embed_offers_the_engines_of_the_table():
    from emoreact import cli

    option = next(p for p in cli.main.commands["embed"].params if p.name == "engine")
    assert list(option.type.choices) == list(ENGINES) == ["local", "ray"]


def test_an_unknown_engine_is_refused_before_the_source_is_read(tmp_path, label_config):
    from emoreact import embed_source

    with pytest.raises(ValueError, match="unknown engine 'spark'; use local or ray"):
        embed_source(tmp_path / "no-such-source", tmp_path / "store", TINY, labels=label_config, engine="spark")
    assert not (tmp_path / "store").exists()


def test_the_local_engine_runs_here_on_one_device_and_one_process_each_on_several():
    assert engine_for("local", "cpu") == LocalEngine("cpu")
    assert engine_for("local", "cpu, cpu") == DevicesEngine(("cpu", "cpu"))


def test_an_engine_added_to_the_table_runs_through_the_shared_end(source, tmp_path, label_config, monkeypatch):
    from emoreact import embed_source

    monkeypatch.setitem(ENGINES, "mean-colour", MeanColourEngine)
    report = embed_source(source, tmp_path / "store", TINY, labels=label_config, device="cpu", config=FAST_EMBED,
                          engine="mean-colour")
    assert (report.engine, report.added, report.already_present) == ("mean-colour", 6, 0)
    assert report.seconds > 0
    written = json.loads((tmp_path / "store" / "report.json").read_text())
    assert (written["engine"], written["added"]) == ("mean-colour", 6)
    store = Store.open(tmp_path / "store")  # finished: its index published and searchable
    vectors = store.vectors()
    _, ids = store.search(vectors, 1)
    assert len(store) == 6 and ids[:, 0].tolist() == [item.id for item in store.items()]
    store.close()
    again = embed_source(source, tmp_path / "store", TINY, labels=label_config, device="cpu", config=FAST_EMBED,
                         engine="mean-colour")
    assert (again.added, again.already_present) == (0, 6)  # the store's hashes went in: nothing read twice
