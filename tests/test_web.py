"""The web app: every endpoint's answer and every error status, through Flask's test client and waitress."""
from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers import assert_error, encoded, multipart_body, png_claiming, upload
from synthetic import draw

LABELS = ["happy", "sad", "angry", "fear", "surprise", "disgust", "neutral", "other"]


# ---- fixtures and helpers -----------------------------------------------------------------

@pytest.fixture
def app(make_app):  # make_app and predictor: tests/conftest.py
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


# ---- POST /api/predict --------------------------------------------------------------------

def test_predict_answers_one_image_in_the_cli_format(client, predictor, tmp_path, store_path, trained):
    from emoreact.cli import main
    from emoreact.web.schemas import Prediction

    data = encoded(("sad",))
    response = client.post("/api/predict", data=upload(("sad.png", data)))
    assert response.status_code == 200
    [result] = response.get_json()["results"]
    Prediction.model_validate(result)
    assert list(result["emotion_scores"]) == LABELS  # label order, not sorted keys
    assert result["predicted_emotions"][0] == "sad"
    assert "😂" in result["blocked_emojis"] and "😂" not in result["allowed_emojis"]
    assert len(result["neighbours"]) == 5
    # The same file through `cli.py predict` gives the same object (its `image` is the path given).
    (tmp_path / "sad.png").write_bytes(data)
    cli = CliRunner().invoke(main, ["predict", str(tmp_path / "sad.png"), "--store", str(store_path),
                                    "--head", str(trained[0]), "--device", "cpu"])
    assert cli.exit_code == 0, cli.output
    assert {**json.loads(cli.output), "image": "sad.png"} == result


def test_predict_answers_a_batch_and_each_bad_file_gets_its_own_entry(client):
    bmp = io.BytesIO()
    Image.new("RGB", (8, 8)).save(bmp, "BMP")
    files = [("happy.jpg", encoded(("happy",), 5, "JPEG")), ("notes.txt", b"hello, not an image"),
             ("scan.bmp", bmp.getvalue()), ("sad.webp", encoded(("sad",), 6, "WEBP")),
             ("anim.gif", encoded(("angry",), 7, "GIF"))]
    response = client.post("/api/predict", data=upload(*files))
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert [r["image"] for r in results] == [name for name, _ in files]
    assert results[1] == {"image": "notes.txt", "filename": "notes.txt", "kind": "invalid", "status": 400,
                          "error": results[1]["error"]}
    assert "not an image" in results[1]["error"]
    assert results[2]["filename"] == "scan.bmp" and results[2]["status"] == 415 and "BMP" in results[2]["error"]
    assert all(results[i]["predicted_emotions"] for i in (0, 3, 4))


def test_predict_takes_k_from_the_form_or_the_query(client):
    data = encoded()
    assert len(client.post("/api/predict?k=2", data=upload(("a.png", data))).get_json()["results"][0]
               ["neighbours"]) == 2
    answer = client.post("/api/predict?k=2", data=upload(("a.png", data), k="3")).get_json()
    assert len(answer["results"][0]["neighbours"]) == 3
    assert client.post("/api/predict", data=upload(("a.png", data), k="0")).get_json()["results"][0][
        "neighbours"] == []


@pytest.mark.parametrize("query, words", [("k=abc", ["k=", "integer"]), ("k=-1", ["k=", "greater"]),
                                          ("k=101", ["k=101", "0 to 100"])])
def test_predict_refuses_a_bad_k_with_400(client, query, words):
    assert_error(client.post(f"/api/predict?{query}", data=upload(("a.png", encoded()))), 400, *words)


def test_predict_without_a_file_is_400(client):
    assert_error(client.post("/api/predict", data={}), 400, "no image", "'image'")
    assert_error(client.post("/api/predict", json={"image": "a.png"}), 400, "no image")
    assert_error(client.post("/api/predict", data={"image": "not a file"}), 400, "image")
    assert_error(client.post("/api/predict", data=b"--x\r\ngarbage", content_type="multipart/form-data; boundary=x"),
                 400, "no image")


def test_predict_of_something_that_is_not_an_image_is_400(client):
    message = assert_error(client.post("/api/predict", data=upload(("notes.jpg", b"hello"))), 400,
                           "notes.jpg", "not an image")
    assert client.post("/api/predict", data=upload(("notes.jpg", b"hello"))).get_json()["results"][0][
        "kind"] == "invalid"
    assert "JPEG, PNG, WebP or GIF" in message
    assert_error(client.post("/api/predict", data=upload(("empty.png", b""))), 400, "empty")
    assert_error(client.post("/api/predict", data=upload(("cut.png", encoded()[:200]))), 400, "damaged")


@pytest.mark.parametrize("fmt", ["TIFF", "BMP"])
def test_predict_of_an_unsupported_format_is_415(client, fmt):
    buffer = io.BytesIO()
    draw(("sad",), 1).save(buffer, fmt)
    assert_error(client.post("/api/predict", data=upload((f"photo.{fmt.lower()}", buffer.getvalue()))), 415,
                 fmt, "JPEG, PNG, WebP or GIF")


def test_predict_of_a_decompression_bomb_is_413_before_decoding(client):
    assert_error(client.post("/api/predict", data=upload(("big.png", png_claiming(8_000, 8_000)))), 413,
                 "8000x8000", "smaller")
    assert_error(client.post("/api/predict", data=upload(("bomb.png", png_claiming(60_000, 60_000)))), 413,
                 "bomb.png", "too large")


def test_pixel_limit_comes_from_the_config(make_app):
    client = make_app(max_pixels=50 * 50).test_client()
    assert_error(client.post("/api/predict", data=upload(("a.png", encoded(size=96)))), 413, "96x96", "2,500")
    assert client.post("/api/predict", data=upload(("a.png", encoded(size=48)))).status_code == 200


def test_mixed_failures_answer_400_with_every_file_named(client):
    response = client.post("/api/predict", data=upload(("a.txt", b"text"), ("b.tif", b"II*\x00" * 8)))
    assert_error(response, 400, "none of the 2 files", "a.txt", "b.tif")
    assert [r["status"] for r in response.get_json()["results"]] == [400, 415]


def test_upload_over_the_size_limit_is_413(make_app):
    client = make_app(max_upload_bytes=20_000).test_client()
    big = encoded(size=96) + b"\0" * 30_000
    assert_error(client.post("/api/predict", data=upload(("big.png", big))), 413, "19.5 KiB")
    assert client.post("/api/predict", data=upload(("ok.png", encoded(size=64)))).status_code == 200


def test_chunked_upload_without_content_length_over_the_limit_is_413(make_app):
    from werkzeug.test import run_wsgi_app

    app = make_app(max_upload_bytes=20_000)

    def post_streamed(padding: int) -> tuple[str, dict]:
        body, content_type = multipart_body([("a.png", encoded(size=64) + b"\0" * padding)])
        # What a server that de-chunks a streamed body hands over: no CONTENT_LENGTH, an input that ends.
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/api/predict", "SERVER_NAME": "localhost",
                   "SERVER_PORT": "80", "wsgi.url_scheme": "http", "CONTENT_TYPE": content_type,
                   "HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input": io.BytesIO(body),
                   "wsgi.input_terminated": True, "wsgi.errors": io.StringIO()}
        chunks, status, _ = run_wsgi_app(app, environ)
        return status, json.loads(b"".join(chunks))

    status, body = post_streamed(30_000)
    assert status.startswith("413") and "19.5 KiB" in body["error"]
    status, body = post_streamed(0)
    assert status.startswith("200") and body["results"][0]["predicted_emotions"]


def test_an_over_long_form_field_is_413_in_plain_words(client):
    response = client.post("/api/predict", data={**upload(("a.png", encoded())), "k": "1" * 600_000})
    assert_error(response, 413, "a text field over 256 KiB", "caption")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.one_of(st.binary(max_size=300), st.sampled_from([b"\x89PNG\r\n\x1a\n", b"GIF89a", b"\xff\xd8\xff",
                                                                  b"RIFF\0\0\0\0WEBP", b"BM", b"II*\x00"])),
       filename=st.text(max_size=40), k=st.one_of(st.none(), st.text(max_size=6)))
def test_nothing_a_client_sends_gives_500(client, content, filename, k):
    fields = {} if k is None else {"k": k}
    for response in (client.post("/api/predict", data=upload((filename, content), **fields)),
                     client.post("/api/neighbours", data=upload((filename, content), **fields)),
                     client.get("/api/neighbours", query_string={"id": filename, **fields})):
        assert response.status_code in (200, 400, 404, 413, 415), response.get_data(as_text=True)
        assert response.mimetype == "application/json" and response.get_json()


def test_too_many_files_is_413(make_app):
    client = make_app(max_files=2).test_client()
    data = encoded(size=32)
    assert_error(client.post("/api/predict", data=upload(*[(f"{i}.png", data) for i in range(3)])), 413,
                 "3 files", "at most 2")


# ---- /api/neighbours ----------------------------------------------------------------------

def test_neighbours_of_an_indexed_image(client, predictor):
    from emoreact.web.schemas import NeighboursResponse

    response = client.get("/api/neighbours?id=0&k=4")
    assert response.status_code == 200
    body = response.get_json()
    NeighboursResponse.model_validate(body)
    assert body["id"] == 0 and body["neighbours"] == predictor.neighbours_of_id(0, 4)
    assert 0 not in [n["id"] for n in body["neighbours"]]
    assert len(client.get("/api/neighbours?id=0").get_json()["neighbours"]) == 5


@pytest.mark.parametrize("query, status, words", [
    ("id=999999", 404, ["999999", "ids run from 0 to"]),
    ("id=abc", 400, ["id=", "integer"]),
    ("id=-3", 400, ["id="]),
    ("id=99999999999999999999999", 400, ["id="]),
    ("", 400, ["no id"]),
    ("id=1&k=0", 400, ["k=0"]),
])
def test_neighbours_of_a_bad_id(client, query, status, words):
    assert_error(client.get(f"/api/neighbours?{query}"), status, *words)


def test_neighbours_of_an_uploaded_image_agree_with_predict(client):
    data = encoded(("angry",), 77)
    near = client.post("/api/neighbours", data=upload(("angry.png", data), k="3"))
    assert near.status_code == 200
    assert near.get_json()["image"] == "angry.png"
    predicted = client.post("/api/predict?k=3", data=upload(("angry.png", data))).get_json()["results"][0]
    assert near.get_json()["neighbours"] == predicted["neighbours"]


def test_neighbours_of_a_bad_upload(client):
    assert_error(client.post("/api/neighbours", data={}), 400, "no image")
    assert_error(client.post("/api/neighbours", data=upload(("a.txt", b"text"))), 400, "a.txt", "not an image")
    assert_error(client.post("/api/neighbours", data=upload(("a.tif", b"II*\x00" * 8))), 415, "TIFF")
    assert_error(client.post("/api/neighbours", data=upload(("b.png", png_claiming(50_000, 50_000)))), 413)
    two = upload(("a.png", encoded()), ("b.png", encoded()))
    assert_error(client.post("/api/neighbours", data=two), 400, "exactly one")


# ---- thumbnails ---------------------------------------------------------------------------

def test_thumbnail_is_a_small_cacheable_jpeg(client, app):
    response = client.get("/api/images/3/thumbnail")
    assert response.status_code == 200 and response.mimetype == "image/jpeg"
    image = Image.open(io.BytesIO(response.data))
    assert image.format == "JPEG" and max(image.size) <= app.extensions["emoreact"].config.thumbnail_px
    assert response.cache_control.public and response.cache_control.max_age > 0
    etag = response.headers["ETag"]
    again = client.get("/api/images/3/thumbnail", headers={"If-None-Match": etag})
    assert again.status_code == 304 and not again.data
    assert client.get("/api/images/4/thumbnail").headers["ETag"] != etag


@pytest.mark.parametrize("image_id", ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd",
                                      "..", "-1", "1.5", "abc", "0x1", "1%00", "C:%5Cwindows"])
def test_thumbnail_ids_that_look_like_paths_are_404(client, image_id):
    assert_error(client.get(f"/api/images/{image_id}/thumbnail"), 404)


def test_thumbnail_of_an_unknown_id_is_404(client):
    assert_error(client.get("/api/images/123456/thumbnail"), 404, "123456")


def test_thumbnail_whose_file_is_gone_is_404(make_app, predictor, tmp_path):
    class MovedStore:
        """The real store, but its files have been moved away since embedding."""

        def __getattr__(self, name):
            return getattr(predictor.store, name)

        def items(self, ids=None):
            return [replace(item, path=str(tmp_path / "gone.jpg")) for item in predictor.store.items(ids)]

    from emoreact.web import WebConfig, create_app

    moved = type("Moved", (), {"store": MovedStore()})()
    client = create_app(WebConfig(loader=lambda config: moved)).test_client()
    message = assert_error(client.get("/api/images/2/thumbnail"), 404, "image 2", "no longer")
    assert str(tmp_path) not in message


# ---- labels, health, docs -----------------------------------------------------------------

def test_labels_give_the_emoji_policy_in_force(client, predictor):
    from emoreact.web.schemas import LabelsResponse

    body = client.get("/api/labels").get_json()
    LabelsResponse.model_validate(body)
    assert [label["name"] for label in body["labels"]] == LABELS
    sad = body["labels"][1]
    assert sad["allowed"] == ["😢", "😐", "💔", "🤍", "🙏"] and "😂" in sad["blocked"]
    assert sad["threshold"] == pytest.approx(float(predictor.head.thresholds_[1]), abs=1e-4)
    assert body["model_id"] == predictor.store.model_id


def test_healthz(client, predictor):
    from emoreact.web.schemas import Health

    body = client.get("/healthz").get_json()
    Health.model_validate(body)
    assert body["status"] == "ok" and body["model_id"] == "tiny-clip/none"
    assert body["index_size"] == len(predictor.store) == 640 and body["device"] == "cpu"


def test_openapi_documents_every_endpoint(client, app):
    doc = client.get("/api/openapi.json").get_json()
    assert doc["openapi"].startswith("3.") and doc["info"]["title"] == "EmoReact API"
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    ours = {(str(rule).replace("<int:image_id>", "{image_id}"), method) for rule in app.url_map.iter_rules()
            if rule.endpoint.split(".")[0] in ("api", "page", "healthz") for method in rule.methods
            if method not in ("HEAD", "OPTIONS")}
    assert ours and ours <= documented, ours - documented
    assert {("/api/predict", "POST"), ("/api/neighbours", "GET"), ("/api/neighbours", "POST"),
            ("/api/images/{image_id}/thumbnail", "GET"), ("/api/labels", "GET"), ("/healthz", "GET"),
            ("/api/openapi.json", "GET"), ("/", "GET"), ("/docs", "GET")} <= documented
    form = doc["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in form


def test_docs_page_works_offline(client):
    response = client.get("/docs", follow_redirects=True)
    assert response.status_code == 200 and response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert "swagger-ui" in html and "http://" not in html and "https://" not in html
    for asset in ("swagger/css/swagger-ui.css", "swagger/js/swagger-ui-bundle.js",
                  "swagger/js/swagger-ui-standalone-preset.js"):
        assert asset in html
        assert client.get(f"/docs/{asset}").status_code == 200, asset


def test_page_needs_nothing_from_outside(client):
    response = client.get("/")
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    html = response.get_data(as_text=True)
    assert "/static/favicon.svg" in html and client.get("/static/favicon.svg").status_code == 200
    for asset in ("/static/app.css", "/static/app.js"):
        assert asset in html
        body = client.get(asset).get_data(as_text=True)
        assert "http://" not in body and "https://" not in body, asset
    assert "http://" not in html and "https://" not in html


# ---- routing errors and the unexpected -----------------------------------------------------

def test_unknown_route_is_json_404(client):
    assert_error(client.get("/api/nothing"), 404, "/api/nothing")
    assert_error(client.get("/nothing"), 404)


def test_wrong_method_is_json_405_with_allow(client):
    response = client.get("/api/predict")
    assert_error(response, 405, "GET", "POST")
    assert "POST" in response.headers["Allow"]
    assert_error(client.delete("/api/images/1/thumbnail"), 405)
    assert_error(client.put("/healthz"), 405)


def test_an_unexpected_failure_is_json_500_without_a_traceback(make_app, predictor, caplog):
    from emoreact.web import WebConfig, create_app

    class Broken:
        store, head, backbone, labels, max_pixels = (predictor.store, predictor.head, predictor.backbone,
                                                     predictor.labels, predictor.max_pixels)

        def predict_files(self, files, k, captions=None):
            raise RuntimeError("secret internal detail /srv/model")

    client = create_app(WebConfig(loader=lambda config: Broken())).test_client()
    with caplog.at_level("ERROR", logger="web.app"):
        message = assert_error(client.post("/api/predict", data=upload(("a.png", encoded()))), 500, "logged")
    assert "secret" not in message
    assert "secret internal detail" in caplog.text


def test_config_may_be_a_mapping_and_unknown_keys_are_refused(predictor):
    from emoreact.web import create_app

    app = create_app({"loader": lambda config: predictor, "k_default": 2})
    assert len(app.test_client().get("/api/neighbours?id=1").get_json()["neighbours"]) == 2
    with pytest.raises(ValueError, match="max_upload"):
        create_app({"max_upload": 5})
    with pytest.raises(ValueError, match="k_default"):
        create_app({"loader": lambda config: predictor, "k_default": 500})


def test_the_default_loader_loads_the_store_and_head_once(store_path, trained, monkeypatch):
    from emoreact import predictor
    from emoreact.web import WebConfig, create_app

    calls = []
    real_load = predictor.load
    monkeypatch.setattr(predictor, "load", lambda *a, **kw: calls.append(a) or real_load(*a, **kw))
    client = create_app(WebConfig(store=store_path, head=trained[0], device="cpu")).test_client()
    for _ in range(3):
        assert client.post("/api/predict", data=upload(("a.png", encoded()))).status_code == 200
    assert len(calls) == 1


# ---- concurrency --------------------------------------------------------------------------

def _images(count: int) -> list[tuple[str, bytes]]:
    return [(f"{i}.png", encoded((LABELS[i % 8],), 500 + i)) for i in range(count)]


def test_concurrent_requests_answer_as_sequential_ones(client):
    images = _images(12)

    def ask(item):
        response = client.post("/api/predict?k=3", data=upload(item))
        assert response.status_code == 200
        return response.get_json()

    sequential = [ask(item) for item in images]
    with ThreadPoolExecutor(max_workers=6) as pool:
        concurrent = list(pool.map(ask, images * 2))
    assert concurrent == sequential * 2


def test_real_server_under_concurrent_clients(app):
    from emoreact.web import background_server

    images = _images(8)

    def ask(base, item):
        body, content_type = multipart_body([item])
        request = urllib.request.Request(f"{base}/api/predict?k=3", body, {"Content-Type": content_type})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    with background_server(app, threads=4) as base:
        sequential = [ask(base, item) for item in images]
        with ThreadPoolExecutor(max_workers=6) as pool:
            concurrent = list(pool.map(lambda item: ask(base, item), images * 2))
        assert concurrent == sequential * 2
        health = json.loads(urllib.request.urlopen(f"{base}/healthz", timeout=10).read())
        assert health["status"] == "ok"


def test_real_server_refuses_a_chunked_upload_over_the_limit_with_json_413(make_app):
    import http.client

    from emoreact.web import background_server

    app = make_app(max_upload_bytes=20_000)
    body, content_type = multipart_body([("a.png", encoded(size=64) + b"\0" * 30_000)])
    with background_server(app) as base:
        host, port = base.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        connection.putrequest("POST", "/api/predict")
        connection.putheader("Content-Type", content_type)
        connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        for start in range(0, len(body), 4096):
            piece = body[start:start + 4096]
            connection.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        connection.send(b"0\r\n\r\n")
        response = connection.getresponse()
        assert response.status == 413
        assert "limit" in json.loads(response.read())["error"]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(f"{base}/api/predict", body, {"Content-Type": content_type}))
        assert refused.value.code == 413 and "error" in json.loads(refused.value.read())


# ---- the CLI command ----------------------------------------------------------------------

def test_serve_command_builds_the_app_and_runs_waitress(store_path, trained, monkeypatch):
    from emoreact import web
    from emoreact.cli import main

    started = {}

    class FakeServer:
        effective_port = 8123

        def run(self):
            started["ran"] = True

    def fake_make_server(app, host, port, threads):
        started.update(app=app, host=host, port=port, threads=threads)
        return FakeServer()

    monkeypatch.setattr(web, "make_server", fake_make_server)
    result = CliRunner().invoke(main, ["serve", "--store", str(store_path), "--head", str(trained[0]),
                                       "--device", "cpu", "--port", "8123", "--threads", "3",
                                       "--max-upload-mb", "2"])
    assert result.exit_code == 0, result.output
    assert started["ran"] and started["threads"] == 3 and started["host"] == "127.0.0.1"
    assert "http://127.0.0.1:8123/" in result.output and "tiny-clip/none" in result.output
    assert started["app"].config["MAX_CONTENT_LENGTH"] == 2 * 1024 * 1024


def test_serve_command_explains_a_missing_store(tmp_path, trained):
    from emoreact.cli import main

    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["serve", "--store", str(tmp_path / "empty"), "--head", str(trained[0])])
    assert result.exit_code == 1 and "not an EmoReact store" in result.output
