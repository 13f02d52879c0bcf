"""The moderator loop in a real browser (headless Chromium via Playwright) against `cli.py serve`: a
correction made on the page is stored, a retrain through the API changes the served answer, and an
image unlike the index is said to be so."""
from __future__ import annotations

import io
import json
import random
import shutil
import time
import urllib.request

import pytest
from PIL import Image

from emoreact.heads import HeadConfig
from helpers import ADMIN_KEY, ARTIFACTS, MODERATOR, launch_browser, shuffled_train_labels, start_server
from synthetic import draw

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    yield from launch_browser()


@pytest.fixture(scope="module")
def served(tmp_path_factory, store_path, label_config):
    """`cli.py serve` over a store copy and a head trained on shuffled labels (so a retrain is better)."""
    from emoreact.index.feedback import label_overrides
    from emoreact.pipeline import train_from_store

    folder = tmp_path_factory.mktemp("moderation")
    shutil.copytree(store_path, folder / "store")
    shuffled_train_labels(folder / "store", seed=3)
    wrong = label_overrides(folder / "store")
    (folder / "store" / "feedback.sqlite").unlink()  # the served head learnt them; the store keeps true labels
    train_from_store(folder / "store", folder / "head", HeadConfig(kind="linear", search=False), label_config,
                     "cpu", overrides=wrong)
    keys = folder / "keys.txt"
    keys.write_text(f"mod:{MODERATOR}\nops:{ADMIN_KEY}:admin\n")
    for base, health in start_server(folder / "store", folder / "head", folder / "serve.log",
                                     ["--api-keys", str(keys)]):
        yield base, health, folder


def call(url: str, key: str | None = None, data: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, headers={**(headers or {}),
                                                              **({"Authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def predict(base: str, data: bytes) -> dict:
    boundary = "emoreactboundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    status, answer = call(f"{base}/api/predict", data=body,
                          headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 200, answer
    return answer["results"][0]


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_a_correction_on_the_page_is_stored_and_a_retrain_changes_the_answer(served, browser, tmp_path):
    from emoreact.index import Store

    base, health, folder = served
    sad = png(draw(("sad",), 31_337))
    before = predict(base, sad)
    (tmp_path / "sad.png").write_bytes(sad)

    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    failures = []
    page.on("console", lambda message: failures.append(message.text) if message.type == "error" else None)
    page.goto(base + "/")
    page.wait_for_selector("#policy-rows tr", state="attached")

    page.fill("#key-input", MODERATOR)  # asked once, kept for this tab
    page.click("#key-save")
    assert page.inner_text("#key-state") == "Key set for this tab."
    assert page.evaluate("() => sessionStorage.getItem('emoreact-api-key')") == MODERATOR

    page.set_input_files("#file-input", [str(tmp_path / "sad.png")])
    page.wait_for_selector(".card .correction:not([hidden])", timeout=60_000)
    card = page.query_selector(".card")
    ticked = [b.get_attribute("value") for b in card.query_selector_all(".correction input[name=label]:checked")]
    assert ticked == before["predicted_emotions"]  # the form starts from what the head said
    for box in card.query_selector_all(".correction input[name=label]"):
        box.set_checked(box.get_attribute("value") == "sad")
    card.query_selector(".correction .note").fill("a blue box on a pale ground: sad")
    card.query_selector(".correction button").click()
    page.wait_for_selector(".correction-state.ok", timeout=60_000)
    saved = card.query_selector(".correction")
    feedback_id, image_id = int(saved.get_attribute("data-feedback-id")), int(saved.get_attribute("data-image-id"))
    assert f"correction #{feedback_id}" in card.query_selector(".correction-state").inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "moderation.png"), full_page=True, animations="disabled")

    # The correction is stored, with who sent it and what the head said, and the image is in the store.
    status, listed = call(f"{base}/api/feedback", MODERATOR)
    [entry] = [e for e in listed["feedback"] if e["id"] == feedback_id]
    assert status == 200 and entry["labels"] == ["sad"] and entry["source"] == "upload"
    assert entry["key_name"] == "mod" and entry["predicted"] == before["predicted_emotions"]
    assert entry["note"] == "a blue box on a pale ground: sad" and entry["image_id"] == image_id
    store = Store.open(folder / "store")
    try:
        [item] = store.items([image_id])
        assert item.labels == ("sad",) and item.split == "train"
    finally:
        store.close()

    # A retrain through the API swaps in a head that answers differently for that image.
    status, started = call(f"{base}/api/admin/retrain", ADMIN_KEY, data=b"")
    assert status == 202, started
    deadline = time.monotonic() + 180
    while True:
        status, state = call(f"{base}/api/admin/retrain", ADMIN_KEY)
        if not state["running"]:
            break
        assert time.monotonic() < deadline, state
        time.sleep(0.5)
    assert state["last"]["outcome"] == "swapped", state
    after = predict(base, sad)
    assert after["emotion_scores"] != before["emotion_scores"]
    assert after["predicted_emotions"][0] == "sad", after
    _, health_now = call(f"{base}/healthz")
    assert health_now["last_retrain"]["outcome"] == "swapped" and health_now["index_size"] == health["index_size"] + 1
    assert failures == [], failures
    page.close()


def test_an_image_unlike_the_index_is_shown_as_unsure(served, browser, tmp_path):
    base, _, _ = served
    noise = Image.frombytes("RGB", (96, 96), random.Random(5).randbytes(96 * 96 * 3))
    data = png(noise)
    assert predict(base, data)["unsure"] is True  # farther from the index than 99% of indexed images are
    (tmp_path / "temple.png").write_bytes(data)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(base + "/")
    page.wait_for_selector("#policy-rows tr", state="attached")
    page.set_input_files("#file-input", [str(tmp_path / "temple.png")])
    page.wait_for_selector(".card .unsure-box", timeout=60_000)
    assert "unlike anything in the index" in page.inner_text(".unsure-box")
    assert page.query_selector(".card .allowed.tentative") is not None  # no reaction shown as certain
    assert page.query_selector(".card .allowed .emoji.top") is None
    assert "none is certain" in page.text_content(".card .allowed-section h3")
    page.screenshot(path=str(ARTIFACTS / "unsure.png"), full_page=True, animations="disabled")
    page.close()
