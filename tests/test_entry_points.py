"""Every entry point sees an image the same way: one decode (reduced-scale JPEG) for embed, predict,
`cli.py neighbours` and the API; neighbours are named relative to the source, never by server path."""
import io
import json

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import FAST_EMBED, TINY
from emoreact.index import Store
from synthetic import draw

FP16 = 2.5e-4  # the stored vector is float16: its rounding error on unit-norm entries stays below this


@pytest.fixture(scope="module")
def photo_store(tmp_path_factory, label_config):
    """A store embedded from a folder: a 1000x800 JPEG (large enough for reduced decoding) and a few others."""
    from emoreact import embed_source

    root = tmp_path_factory.mktemp("entry")
    (root / "src" / "sub").mkdir(parents=True)
    pixels = np.zeros((800, 1000, 3), np.uint8)
    pixels[:, ::2] = (250, 240, 30)  # fine stripes: decoding at 1/8 scale and in full differ most here
    buffer = io.BytesIO()
    from PIL import Image
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    (root / "src" / "sub" / "big.jpg").write_bytes(buffer.getvalue())
    for n in range(5):
        draw(("happy",), seed=n).save(root / "src" / f"small{n}.png")
    embed_source(root / "src", root / "store", TINY, labels=label_config, device="cpu", config=FAST_EMBED)
    return root


@pytest.fixture
def queries(monkeypatch):
    """Records the query vectors that reach the store's search, from whichever entry point."""
    seen = []
    search = Store.search

    def recording(self, vectors, k):
        seen.append(np.array(vectors, dtype=np.float32))
        return search(self, vectors, k)

    monkeypatch.setattr(Store, "search", recording)
    return seen


def test_one_jpeg_gives_one_vector_through_embed_predict_cli_and_api(photo_store, trained, queries):
    from emoreact import cli
    from emoreact.embed import decode_image
    from emoreact.predictor import load
    from emoreact.web import WebConfig, create_app

    big = photo_store / "src" / "sub" / "big.jpg"
    predictor = load(photo_store / "store", trained[0], device="cpu")
    queries.clear()  # load's novelty calibration searches the store too; those are not query images
    [item] = [it for it in predictor.store.items() if it.path.endswith("big.jpg")]
    stored = predictor.store.vector(item.id)
    full_decode = predictor.embed([decode_image(big.read_bytes())])[0]
    assert np.abs(full_decode - stored).max() > 10 * FP16  # the test can tell the two decodes apart

    predicted = predictor.predict(str(big), k=3)["neighbours"]
    result = CliRunner().invoke(cli.main, ["neighbours", str(big), "--store", str(photo_store / "store"),
                                           "--k", "3", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    app = create_app(WebConfig(loader=lambda config: predictor))
    response = app.test_client().post("/api/neighbours", data={"image": (io.BytesIO(big.read_bytes()), "big.jpg"),
                                                               "k": "3"})
    assert response.status_code == 200, response.get_json()

    assert len(queries) == 3  # predict, the CLI, the API
    for vector in queries:
        assert np.array_equal(vector, queries[0])
        assert np.abs(vector[0] - stored).max() < FP16
    assert json.loads(result.output)["neighbours"] == response.get_json()["neighbours"] == predicted
    assert predicted[0]["id"] == item.id and predicted[0]["similarity"] > 0.9999


def test_neighbours_name_images_relative_to_the_source_not_by_server_path(photo_store, trained):
    from emoreact.predictor import load
    from emoreact.web import WebConfig, create_app

    store = Store.open(photo_store / "store")
    assert store.manifest["source_roots"] == [str(photo_store / "src")]
    assert all(item.path.startswith(str(photo_store / "src")) for item in store.items())  # server side: absolute
    store.close()
    predictor = load(photo_store / "store", trained[0], device="cpu")
    client = create_app(WebConfig(loader=lambda config: predictor)).test_client()
    big_id = next(it.id for it in predictor.store.items() if it.path.endswith("big.jpg"))
    response = client.get(f"/api/neighbours?id={big_id}&k=5")
    assert response.status_code == 200
    assert {n["path"] for n in response.get_json()["neighbours"]} == {f"small{n}.png" for n in range(5)}
    assert str(photo_store) not in response.get_data(as_text=True)
    near = client.post("/api/predict", data={"image": (io.BytesIO((photo_store / "src" / "sub" / "big.jpg")
                                                                  .read_bytes()), "big.jpg")})
    assert near.get_json()["results"][0]["neighbours"][0]["path"] == "sub/big.jpg"
    assert client.get(f"/api/images/{big_id}/thumbnail").status_code == 200  # found by its server path
