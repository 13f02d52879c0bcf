"""The upload page with a caption, in a real browser against `cli.py serve` with a post head: the caption
goes with the image, the answer shows the words and marks the emotion the words drove."""
from __future__ import annotations

import pytest

from helpers import ARTIFACTS, launch_browser, start_server
from synthetic import draw

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(post_store, post_heads, tmp_path_factory):
    yield from start_server(post_store, post_heads[0], tmp_path_factory.mktemp("serve") / "serve.log")


@pytest.fixture(scope="module")
def browser():
    yield from launch_browser()


def test_a_caption_typed_on_the_page_goes_with_the_image_and_its_channel_is_shown(server, browser, tmp_path):
    base, _ = server
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    failures = []
    page.on("console", lambda message: failures.append(message.text) if message.type == "error" else None)
    page.goto(base + "/")
    draw(("happy",), seed=424_242).save(tmp_path / "family.png")
    page.fill("#caption-input", "we lost him yesterday")
    page.set_input_files("#file-input", [str(tmp_path / "family.png")])
    page.wait_for_selector(".card .bars", timeout=60_000)
    card = page.query_selector(".card")
    assert card.query_selector(".posted-caption").inner_text() == "we lost him yesterday"
    assert "we lost him yesterday" in card.query_selector(".words").inner_text()
    chips = {chip.get_attribute("data-channel") for chip in card.query_selector_all(".emotions .chip")}
    assert "text" in chips and "from the words" in card.query_selector(".emotions").inner_text()
    assert "😂" in card.query_selector(".blocked").text_content()
    page.fill("#caption-input", "")
    page.set_input_files("#file-input", [str(tmp_path / "family.png")])
    page.wait_for_function("() => document.querySelectorAll('.card .bars').length === 2", timeout=60_000)
    plain = page.query_selector(".card")  # the newest card comes first
    assert plain.query_selector(".words") is None and plain.query_selector(".posted-caption").is_hidden()
    assert "😂" in plain.query_selector(".allowed").text_content()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "page-posts.png"), full_page=True, animations="disabled")
    assert failures == [], failures
    page.close()
