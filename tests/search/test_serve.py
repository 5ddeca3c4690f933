"""dsmd serve: the JSON API and its errors, the paths it shows, thumbnails of indexed files only, a
port in use; and the page in a real headless browser (Debian's chromium with chromium-driver,
driven by selenium). Limits under load are in test_serve_limits.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from serving import get, get_json, running

from dsmd.cli import main
from dsmd.errors import DsmdError
from dsmd.search.server import SearchService, make_server

RELATIVE = {"a/red.png", "a/green.png", "b/blue.png"}


def test_the_api_answers_with_the_search_fields(served):
    status, body, kind = get(f"{served['url']}/api/search?q=a+red+square&k=2")
    result = json.loads(body)
    assert status == 200 and kind == "application/json"
    assert set(result) == {"query", "results", "ms"} and result["query"] == "a red square"
    assert len(result["results"]) == 2 and set(result["results"][0]) == {"id", "path", "score"}
    status, info = get_json(f"{served['url']}/api/info")
    assert status == 200 and info["count"] == 3 and info["kind"] == "images"
    assert info["limits"] == {"max_query_chars": 1000, "max_k": 100}
    assert info["index_kind"] == "flat" and info["recall_at_10"] == 1.0


def test_a_compressed_index_answers_in_the_same_shape(compressed):
    with running(SearchService(compressed["index"], compressed["encoder"])) as server:
        status, body = get_json(f"{server['url']}/api/search?q=a+red+circle+and+a+blue+square&k=5")
        _, info = get_json(f"{server['url']}/api/info")
    assert status == 200 and set(body) == {"query", "results", "ms"} and len(body["results"]) == 5
    assert all(set(hit) == {"id", "text", "score"} for hit in body["results"])
    assert [hit["score"] for hit in body["results"]] == sorted((hit["score"] for hit in body["results"]), reverse=True)
    assert info["index_kind"] == "ivfpq" and info["recall_at_10"] >= 0.95 and info["count"] == 1200


@pytest.mark.parametrize(
    "query, fragment",
    [
        ("q=red&k=abc", "k must be a whole number from 1 to 100 (results to return); got 'abc'"),
        ("q=red&k=0", "k must be a whole number from 1 to 100"),
        ("q=red&k=-3", "k must be a whole number from 1 to 100"),
        ("q=red&k=101", "k must be a whole number from 1 to 100"),
        ("q=red&k=" + "9" * 400, "k must be a whole number from 1 to 100"),
        ("q=%20", "the query is empty"),
        ("q=", "the query is empty"),
        ("k=5", "the query is empty"),
        ("q=" + "x" * 1001, "q must be at most 1000 characters; this one has 1001"),
        ("q=" + "%C3%A9" * 1001, "q must be at most 1000 characters; this one has 1001"),
    ],
    ids=["k-abc", "k-0", "k-negative", "k-101", "k-huge", "q-blank", "q-empty", "q-missing", "q-long", "q-long-utf8"],
)
def test_bad_queries_are_a_400_that_names_the_limit(served, query, fragment):
    status, body = get_json(f"{served['url']}/api/search?{query}")
    assert status == 400 and set(body) == {"error"}
    assert fragment in body["error"] and "\n" not in body["error"] and "Traceback" not in body["error"]
    assert len(body["error"]) < 200  # the offending value is shortened, never echoed whole


def test_the_limits_themselves_are_accepted(served):
    status, body = get_json(f"{served['url']}/api/search?q={'x' * 1000}&k=100")
    assert status == 200 and len(body["results"]) == 3  # k beyond the index's size: all of it


def test_paths_are_relative_to_the_indexed_folders(served):
    _, body = get_json(f"{served['url']}/api/search?q=a+red+square&k=10")
    assert {hit["path"] for hit in body["results"]} == RELATIVE
    _, info = get_json(f"{served['url']}/api/info")
    assert info["index"] == "index" and info["model"] == "export"
    _, body, _ = get(f"{served['url']}/thumb/7")
    assert str(served["root"]) not in body.decode()


def test_show_paths_shows_them_as_indexed(served):
    with running(SearchService(served["index"], served["encoder"], show_paths=True)) as server:
        _, body = get_json(f"{server['url']}/api/search?q=a+red+square&k=10")
        _, info = get_json(f"{server['url']}/api/info")
    indexed = {served["index"].label(i) for i in range(3)}
    assert {hit["path"] for hit in body["results"]} == indexed
    assert all(Path(p).is_absolute() and Path(p).relative_to(served["root"]) for p in indexed)
    assert info["index"] == str(served["index"].path) and info["model"] == str(served["export"])


def test_thumbnails_come_only_from_indexed_files(served):
    status, body, kind = get(f"{served['url']}/thumb/0")
    assert status == 200 and kind == "image/jpeg" and body[:2] == b"\xff\xd8"
    for path in ("/thumb/3", "/thumb/-1", "/thumb/99999999999999999999", "/thumb/x", "/thumb/0.5"):
        status, body = get_json(served["url"] + path)
        assert status == 404 and "no indexed image" in body["error"], path
    for path in ("/thumb/../../etc/passwd", "/thumb/%2e%2e%2fetc%2fpasswd", "/etc/passwd", "/photos/a/red.png"):
        status, body = get_json(served["url"] + path)
        assert status == 404 and set(body) == {"error"}, path


def test_a_thumbnail_whose_file_went_is_a_404_without_its_path(gallery, tmp_path):
    from PIL import Image

    from dsmd.search.build import index_images

    Image.new("RGB", (20, 20), (1, 2, 3)).save(tmp_path / "gone.png")
    index = index_images(tmp_path / "index", gallery["encoder"], [str(tmp_path)], progress=False, log=lambda *_: None)
    (tmp_path / "gone.png").unlink()
    with running(SearchService(index, gallery["encoder"])) as server:
        status, body = get_json(f"{server['url']}/thumb/0")
    assert status == 404 and body["error"] == "indexed image 0 cannot be read now."


def test_the_openapi_schema_describes_the_api(served):
    status, schema = get_json(f"{served['url']}/openapi.json")
    assert status == 200 and {"/api/search", "/api/info", "/thumb/{item}"} <= set(schema["paths"])
    params = {p["name"]: p["schema"] for p in schema["paths"]["/api/search"]["get"]["parameters"]}
    assert params["k"]["maximum"] == 100 and params["k"]["minimum"] == 1 and params["q"]["maxLength"] == 1000
    status, page, kind = get(f"{served['url']}/docs")
    assert status == 200 and kind.startswith("text/html") and b"swagger" in page.lower()


def test_other_pages_and_methods_are_json_errors(served):
    status, body = get_json(f"{served['url']}/nothing/here")
    assert status == 404 and body == {"error": "no such page: /nothing/here"}
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(urllib.request.Request(f"{served['url']}/api/search?q=x", method="POST"), timeout=120)
    assert caught.value.code == 405 and "error" in json.loads(caught.value.read())


def test_a_port_in_use_is_one_line(served, capsys):
    with pytest.raises(DsmdError, match=f"port {served['port']} on 127.0.0.1 is in use. Choose another with --port"):
        make_server(SearchService(served["index"], served["encoder"]), "127.0.0.1", served["port"])
    argv = ["serve", "--index", str(served["index"].path), "--port", str(served["port"]), "--quiet"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"dsmd: error: port {served['port']} on 127.0.0.1 is in use.")


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
        expected = json.loads(get(f"{served['url']}/api/search?q=a+red+square&k=24")[1])["results"]
        assert len(cards) == len(expected) == 3
        first = cards[0]
        assert first.find_element(By.CSS_SELECTOR, ".label").text == expected[0]["path"]
        assert first.find_element(By.CSS_SELECTOR, "img").get_attribute("src").endswith(f"/thumb/{expected[0]['id']}")
        assert (
            "results in" in browser.find_element(By.ID, "status").text
            and " ms" in browser.find_element(By.ID, "status").text
        )
        assert "3 images in index" in browser.find_element(By.ID, "about").text
        screenshot = tmp_path / "serve.png"
        browser.save_screenshot(str(screenshot))
        assert screenshot.stat().st_size > 5000
        Path(served["root"] / "serve.png").write_bytes(screenshot.read_bytes())
    finally:
        browser.quit()
