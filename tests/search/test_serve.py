"""dsmd serve: the JSON API, thumbnails of indexed files only, a port in use; and the page in a real
headless browser (Debian's chromium with chromium-driver, driven by selenium)."""

from __future__ import annotations

import json
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

import dsmd
from dsmd.errors import DsmdError
from dsmd.search.build import index_images
from dsmd.search.server import SearchService, make_server

QUIET = {"progress": False, "log": lambda *_: None}


@pytest.fixture(scope="module")
def served(searchable, tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    (root / "photos").mkdir()
    colours = {"red": (220, 20, 20), "green": (20, 180, 40), "blue": (30, 40, 220)}
    for name, colour in colours.items():
        Image.new("RGB", (40, 40), colour).save(root / "photos" / f"{name}.png")
    encoder = dsmd.load_student(searchable["export"])
    index = index_images(root / "index", encoder, [str(root / "photos")], **QUIET)
    server = make_server(SearchService(index, encoder), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    yield {"url": f"http://{host}:{port}", "port": port, "index": index, "root": root}
    server.shutdown()
    server.server_close()


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            return response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers["Content-Type"]


def test_the_api_answers_with_the_search_fields(served):
    status, body, kind = _get(f"{served['url']}/api/search?q=a+red+square&k=2")
    result = json.loads(body)
    assert status == 200 and kind == "application/json"
    assert set(result) == {"query", "results", "ms"} and result["query"] == "a red square"
    assert len(result["results"]) == 2 and set(result["results"][0]) == {"id", "path", "score"}
    status, body, _ = _get(f"{served['url']}/api/search?q=%20")
    assert status == 400 and "the query is empty" in json.loads(body)["error"]
    status, body, _ = _get(f"{served['url']}/api/info")
    assert status == 200 and json.loads(body)["count"] == 3


def test_thumbnails_come_only_from_indexed_files(served):
    status, body, kind = _get(f"{served['url']}/thumb/0")
    assert status == 200 and kind == "image/jpeg" and body[:2] == b"\xff\xd8"
    for path in ("/thumb/3", "/thumb/-1", "/thumb/../../etc/passwd", "/etc/passwd", "/thumb/x"):
        status, _, _ = _get(served["url"] + path)
        assert status == 404, path


def test_a_port_in_use_is_one_line(served, searchable):
    index, encoder = served["index"], dsmd.load_student(searchable["export"])
    with pytest.raises(DsmdError, match=f"port {served['port']} on 127.0.0.1 is in use. Choose another with --port"):
        make_server(SearchService(index, encoder), "127.0.0.1", served["port"])


def _browser():
    selenium = pytest.importorskip("selenium")  # noqa: F841 - a dev dependency (bash scripts/setup.sh --dev)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("the browser test needs Debian's chromium and chromium-driver: bash scripts/setup.sh --dev")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--window-size=1100,800",
    ):
        options.add_argument(flag)
    return options, Service(driver)


def test_the_page_searches_in_a_real_browser(served, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    options, service = _browser()
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    browser = webdriver.Chrome(options=options, service=service)
    try:
        browser.get(served["url"] + "/")
        box = browser.find_element(By.ID, "q")
        box.send_keys("a red square")
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        WebDriverWait(browser, 120).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#grid .card")))
        WebDriverWait(browser, 120).until(
            lambda b: b.execute_script("return [...document.images].every(i => i.complete && i.naturalWidth > 0)")
        )
        cards = browser.find_elements(By.CSS_SELECTOR, "#grid .card")
        expected = json.loads(_get(f"{served['url']}/api/search?q=a+red+square&k=24")[1])["results"]
        assert len(cards) == len(expected) == 3
        first = cards[0]
        assert first.find_element(By.CSS_SELECTOR, ".label").text == expected[0]["path"]
        assert first.find_element(By.CSS_SELECTOR, "img").get_attribute("src").endswith(f"/thumb/{expected[0]['id']}")
        assert (
            "results in" in browser.find_element(By.ID, "status").text
            and " ms" in browser.find_element(By.ID, "status").text
        )
        screenshot = tmp_path / "serve.png"
        browser.save_screenshot(str(screenshot))
        assert screenshot.stat().st_size > 5000
        Path(served["root"] / "serve.png").write_bytes(screenshot.read_bytes())
    finally:
        browser.quit()
