"""Reloading a running server: a bad store or head never replaces a good one, and requests never fail."""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from click.testing import CliRunner

from emoreact.index import Store
from helpers import encoded, multipart_body, upload

SMALL = 100  # images in the second store


def subset_store(source: Path, dest: Path, count: int) -> Path:
    """Gives a new store holding the first `count` images of `source` (same model, same vectors)."""
    full = Store.open(source)
    store = Store.create_or_resume(dest, full.model_id, full.dim, full.manifest["preprocess"], full.labels)
    rows = [{"path": it.path, "sha256": it.sha256, "labels": list(it.labels or []), "split": it.split,
             "width": it.width, "height": it.height, "bytes": 0} for it in full.items()[:count]]
    store.add(rows, full.vectors()[:count])
    store.finish()
    store.close()
    full.close()
    return dest


@pytest.fixture(scope="module")
def small_store(tmp_path_factory, store_path) -> Path:
    return subset_store(store_path, tmp_path_factory.mktemp("small") / "store", SMALL)


@pytest.fixture
def served(tmp_path, store_path, small_store, trained):
    """(app, folder): the app serves `folder/current` (a symlink to `big`, a copy of the session store)
    and `folder/head`; `folder/small` is a smaller store."""
    from emoreact.web import WebConfig, create_app

    shutil.copytree(store_path, tmp_path / "big")
    shutil.copytree(trained[0], tmp_path / "head")
    (tmp_path / "small").symlink_to(small_store)
    (tmp_path / "current").symlink_to(tmp_path / "big")
    app = create_app(WebConfig(store=tmp_path / "current", head=tmp_path / "head", device="cpu"))
    return app, tmp_path


def repoint(folder: Path, target: str) -> None:
    """Swaps `folder/current` to `folder/target` in one rename, as a deploy script would."""
    (folder / "next").symlink_to(folder / target)
    os.replace(folder / "next", folder / "current")


def health(client) -> dict:
    response = client.get("/healthz")
    assert response.status_code == 200
    return response.get_json()


def assert_serving(client, index_size: int) -> None:
    assert health(client)["index_size"] == index_size
    response = client.post("/api/predict", data=upload(("a.png", encoded())))
    assert response.status_code == 200 and response.get_json()["results"][0]["predicted_emotions"] is not None
    assert client.get(f"/api/neighbours?id={index_size - 1}&k=2").status_code == 200


def replace_with(path: Path, data: bytes) -> None:
    """Puts new bytes at `path` by rename, as deploys should: the open old file stays intact for the
    server. (Overwriting the served metadata.sqlite in place would break it before any reload.)"""
    path.with_suffix(".new").write_bytes(data)
    os.replace(path.with_suffix(".new"), path)


DAMAGE = {  # file of the served store or head -> its damaged content
    "big/index-000001.faiss": lambda good: good[: len(good) // 3],  # the index the store published first
    "big/manifest.json": lambda good: b'{"format": "emoreact-store", "format_',
    "big/metadata.sqlite": lambda good: b"not a database" * 100,
    "head/weights.safetensors": lambda good: good[: len(good) // 3],
    "head/manifest.json": lambda good: b"{}",
}


@pytest.mark.parametrize("name", DAMAGE)
def test_a_failed_reload_names_the_file_and_keeps_serving_the_old_store(served, name, caplog):
    app, folder = served
    client, resources = app.test_client(), app.extensions["emoreact"]
    path = folder / name
    good = path.read_bytes()
    replace_with(path, DAMAGE[name](good))

    with caplog.at_level(logging.ERROR, logger="web.api"):
        result = resources.reload()
    assert not result.ok and path.name in result.message and "still serving" in result.message
    assert path.name in caplog.text
    assert_serving(client, 640)
    assert health(client)["last_reload"]["ok"] is False
    assert str(folder) not in json.dumps(health(client))  # the reason goes to the log, not to clients

    replace_with(path, good)
    assert resources.reload().ok
    assert_serving(client, 640)
    assert health(client)["last_reload"]["ok"] is True


def test_reload_serves_a_new_store_once_it_is_pointed_at(served):
    app, folder = served
    client, resources = app.test_client(), app.extensions["emoreact"]
    assert health(client)["last_reload"] is None
    repoint(folder, "small")
    result = resources.reload()
    assert result.ok and f"{SMALL} indexed images" in result.message
    assert_serving(client, SMALL)
    assert client.get(f"/api/neighbours?id={SMALL}").status_code == 404  # the big store's ids are gone
    repoint(folder, "missing")
    assert not resources.reload().ok
    assert_serving(client, SMALL)


@pytest.fixture
def slow_first_load():
    """(loader, loaded, entered, release): a loader whose first predictor holds /api/neighbours until
    `release` is set (`entered` says a request got there); every predictor it made is in `loaded`."""
    from emoreact.predictor import Predictor, load

    entered, release = threading.Event(), threading.Event()

    class Slow(Predictor):
        def neighbours_of_id(self, image_id, k=5):
            entered.set()
            assert release.wait(30)
            return super().neighbours_of_id(image_id, k)

    kinds, loaded = iter([Slow, Predictor]), []  # the first load is slow to answer, the reload is not

    def loader(c):
        base = load(c.store, c.head, device=c.device)
        loaded.append(next(kinds)(base.backbone, base.store, base.head, base.max_pixels, owns_store=True))
        return loaded[-1]

    return loader, loaded, entered, release


def test_a_request_in_flight_finishes_on_the_store_it_started_with(served, slow_first_load):
    from emoreact.web import WebConfig, create_app

    _, folder = served
    loader, _, entered, release = slow_first_load
    app = create_app(WebConfig(store=folder / "current", head=folder / "head", device="cpu", loader=loader))
    client, resources = app.test_client(), app.extensions["emoreact"]
    with ThreadPoolExecutor(max_workers=1) as pool:
        in_flight = pool.submit(client.get, "/api/neighbours?id=600&k=3")  # id 600 is only in the big store
        assert entered.wait(30)
        repoint(folder, "small")
        assert resources.reload().ok
        assert health(client)["index_size"] == SMALL  # new requests already see the new store
        release.set()
        response = in_flight.result(timeout=30)
    assert response.status_code == 200 and len(response.get_json()["neighbours"]) == 3


def test_reloads_under_concurrent_requests_cause_no_errors(served):
    from emoreact.web import background_server

    app, folder = served
    resources = app.extensions["emoreact"]
    body, content_type = multipart_body([("a.png", encoded())])
    stop, seen, failures = threading.Event(), set(), []

    def client_loop() -> int:
        asked = 0
        while not stop.is_set() and asked < 200:
            for path, data in (("/api/predict?k=3", body), ("/healthz", None), ("/api/neighbours?id=50&k=2", None),
                               ("/api/images/7/thumbnail", None)):
                headers = {"Content-Type": content_type} if data else {}
                try:
                    with urllib.request.urlopen(urllib.request.Request(base + path, data, headers), timeout=60) as r:
                        if path == "/healthz":
                            seen.add(json.loads(r.read())["index_size"])
                except Exception as exc:  # noqa: BLE001 - every failure is collected and reported
                    failures.append((path, repr(exc)))
                asked += 1
        return asked

    with background_server(app, threads=4) as base:
        with ThreadPoolExecutor(max_workers=4) as pool:
            clients = [pool.submit(client_loop) for _ in range(4)]
            outcomes = []
            for target in ("small", "missing", "big", "small", "big"):
                time.sleep(0.2)
                repoint(folder, target)
                outcomes.append(resources.reload().ok)
            stop.set()
            asked = sum(c.result(timeout=120) for c in clients)
    assert failures == []
    assert outcomes == [True, False, True, True, True]
    assert seen <= {640, SMALL} and asked >= 20


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_reloads_in_the_background_and_the_old_handler_comes_back(served):
    from emoreact.web import reload_on_sighup

    app, folder = served
    resources = app.extensions["emoreact"]
    before = signal.getsignal(signal.SIGHUP)
    repoint(folder, "small")
    with reload_on_sighup(app) as installed:
        assert installed
        os.kill(os.getpid(), signal.SIGHUP)
        deadline = time.monotonic() + 60
        while resources.last_reload is None and time.monotonic() < deadline:
            time.sleep(0.05)
    assert signal.getsignal(signal.SIGHUP) is before
    assert resources.last_reload is not None and resources.last_reload.ok
    assert len(resources.predictor.store) == SMALL

    result = []
    worker = threading.Thread(target=lambda: result.append(reload_on_sighup(app).__enter__()))
    worker.start()
    worker.join()
    assert result == [False]  # off the main thread Python allows no handler; nothing is installed


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_serve_installs_the_sighup_reload(store_path, trained, monkeypatch):
    from emoreact import web
    from emoreact.cli import main

    seen = {}

    class FakeServer:
        effective_port = 8124

        def run(self):
            resources = seen["app"].extensions["emoreact"]
            seen["handler"] = signal.getsignal(signal.SIGHUP)
            os.kill(os.getpid(), signal.SIGHUP)
            deadline = time.monotonic() + 60
            while resources.last_reload is None and time.monotonic() < deadline:
                time.sleep(0.05)
            seen["reload"] = resources.last_reload

    monkeypatch.setattr(web, "make_server", lambda app, host, port, threads: seen.update(app=app) or FakeServer())
    before = signal.getsignal(signal.SIGHUP)
    result = CliRunner().invoke(main, ["serve", "--store", str(store_path), "--head", str(trained[0]),
                                       "--device", "cpu", "--port", "8124"])
    assert result.exit_code == 0, result.output
    assert f"kill -HUP {os.getpid()} reloads" in result.output
    assert seen["handler"] is not before and seen["reload"].ok
    assert signal.getsignal(signal.SIGHUP) is before
    help_text = CliRunner().invoke(main, ["serve", "--help"]).output
    assert "SIGHUP" in help_text and "previous store and head keep serving" in help_text


def test_reload_leaks_no_batcher_thread_and_closes_each_old_store(served):
    from emoreact.web import WebConfig, create_app
    from emoreact.web.config import load_predictor

    _, folder = served
    loaded = []

    def loader(config):
        loaded.append(load_predictor(config))
        return loaded[-1]

    app = create_app(WebConfig(store=folder / "current", head=folder / "head", device="cpu", micro_batch=True,
                               loader=loader))
    client, resources = app.test_client(), app.extensions["emoreact"]
    assert_serving(client, 640)
    before = set(threading.enumerate())  # other tests' threads may come and go; count only ours
    for n in range(20):
        repoint(folder, "small" if n % 2 == 0 else "big")
        assert resources.reload().ok
        assert_serving(client, SMALL if n % 2 == 0 else 640)
    started = [t for t in threading.enumerate() if t not in before]
    assert [t.name for t in started] == ["micro-batcher"]  # the served predictor's; the 20 others stopped
    assert len(threading.enumerate()) <= len(before)
    assert len(loaded) == 21 and all(p.store.closed for p in loaded[:-1]) and not loaded[-1].store.closed


def test_a_replaced_store_is_closed_only_after_its_last_request(served, slow_first_load):
    from emoreact.web import WebConfig, create_app

    _, folder = served
    loader, loaded, entered, release = slow_first_load
    app = create_app(WebConfig(store=folder / "current", head=folder / "head", device="cpu", loader=loader))
    client, resources = app.test_client(), app.extensions["emoreact"]
    with ThreadPoolExecutor(max_workers=1) as pool:
        in_flight = pool.submit(client.get, "/api/neighbours?id=600&k=3")
        assert entered.wait(30)
        repoint(folder, "small")
        assert resources.reload().ok
        assert_serving(client, SMALL)
        assert not loaded[0].store.closed  # its request is still running on it
        release.set()
        assert in_flight.result(timeout=30).status_code == 200
    assert loaded[0].store.closed and not loaded[1].store.closed


def test_search_settings_given_to_serve_survive_a_reload_and_a_store_refresh(store_path, trained):
    from emoreact.web import WebConfig, create_app

    app = create_app(WebConfig(store=store_path, head=trained[0], device="cpu", nprobe=7, candidates=90))
    resources = app.extensions["emoreact"]
    opened = Store.open(store_path)
    tuned = opened.index_settings
    opened.close()
    for step in ("start", "reload", "refresh"):
        if step == "reload":
            assert resources.reload().ok
        elif step == "refresh":
            resources.refresh_store()
        settings = resources.predictor.store.index_settings
        assert (settings.nprobe, settings.candidates) == (7, 90), step
        assert settings.factory == tuned.factory and settings.file == tuned.file
    client = app.test_client()
    assert client.get("/api/neighbours?id=0&k=2").status_code == 200
