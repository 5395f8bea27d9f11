"""The search page at / in a real headless Chromium (Selenium) against a real server.

Debian's chromium and chromium-driver are used directly (no selenium-manager download).
Where they are missing the browser tests skip with what to install, except under CI=true,
where they fail: CI must prove the page can search.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.support.service_bundle import AUTH, ServerProcess, png

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL_HINT = (
    "install them with: apt-get install -y --no-install-recommends chromium chromium-driver "
    "(as root; scripts/setup.sh does it when run as root)"
)
WAIT_S = 20


def _require_browser() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e '.[dev]')")
    if not missing:
        return
    message = f"the browser test needs {', '.join(missing)}; {INSTALL_HINT}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def test_a_missing_browser_skips_with_a_hint_but_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import tests.service.test_search_page as page_test

    monkeypatch.setattr(page_test, "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y --no-install-recommends"):
        page_test._require_browser()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=f"needs {tmp_path / 'no-chromium'}"):
        page_test._require_browser()


# ---------------------------------------------------------------- API-level checks (no browser)


def test_page_and_assets_do_not_shadow_the_api(api: TestClient) -> None:
    page = api.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/static/app.js"' in page.text
    for asset, kind in (("/static/app.js", "javascript"), ("/static/style.css", "text/css")):
        r = api.get(asset)
        assert r.status_code == 200 and kind in r.headers["content-type"], asset
    # No asset pulls anything from another origin.
    for asset in ("/", "/static/app.js", "/static/style.css"):
        assert "http://" not in api.get(asset).text and "https://" not in api.get(asset).text
    schema = api.get("/openapi.json").json()
    assert "/" not in schema["paths"] and "/v1/search" in schema["paths"]
    assert "/v1/items/{item_id}/thumbnail" in schema["paths"]
    assert api.get("/docs").status_code == 200
    assert api.get("/v1/stats").json()["count"] == 0
    missing = api.get("/static/nope.js")
    assert missing.status_code == 404
    # The page's file is served only as the page, with its security headers.
    raw = api.get("/static/index.html", follow_redirects=False)
    assert raw.status_code == 308 and raw.headers["location"] == "/"


# ---------------------------------------------------------------- the page in a real browser


#: Limits the page must take from the server, not from its own defaults.
MAX_K, MAX_TEXT_CHARS = 300, 5000
LONG_NAME = "holiday-2024-the-long-weekend-by-the-sea-picture-number-2.png"


@pytest.fixture(scope="module")
def server(svc_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real server holding three images and three texts."""
    root = tmp_path_factory.mktemp("page")
    limits = {"HASHBRIDGE_MAX_K": str(MAX_K), "HASHBRIDGE_MAX_TEXT_CHARS": str(MAX_TEXT_CHARS)}
    with ServerProcess(svc_bundle_dir, root / "data", root / "server.log", **limits) as proc:
        proc.wait_ready()
        with httpx.Client(base_url=proc.url, timeout=30, headers=AUTH) as http:
            names = ["pic-0.png", "pic-1.png", LONG_NAME]
            files = [("files", (names[i], png(i), "image/png")) for i in range(3)]
            images = http.post("/v1/items", files=files).json()["items"]
            texts = ["a cat on a red car", "a dog on the beach", "snow on a mountain at night"]
            body = {
                "items": [
                    {
                        "text": t,
                        "client_id": f"caption-{i}",
                        "metadata": {"labels": ["animal", "urban"][: i + 1], "album": "trips"},
                    }
                    for i, t in enumerate(texts)
                ]
            }
            captions = http.post("/v1/items", json=body).json()["items"]
        proc.items = {"images": images, "texts": captions}
        yield proc
        proc.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,900",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(browser: Any, url: str) -> None:
    """Load the page and wait until it has read the collection's modalities."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url + "/")
    WebDriverWait(browser, WAIT_S).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "input[name=modality]")
    )


def wait_for_tiles(browser: Any, status_start: str = "") -> list[Any]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def done(d: Any) -> bool:
        status = d.find_element(By.ID, "status").text
        return status.startswith(status_start) and status.endswith("results")

    WebDriverWait(browser, WAIT_S).until(done)
    return list(browser.find_elements(By.CSS_SELECTOR, "#results li.tile"))


def search_text(browser: Any, text: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    box = browser.find_element(By.ID, "query-text")
    box.clear()
    box.send_keys(text)
    browser.find_element(By.ID, "search-button").click()
    return wait_for_tiles(browser)


def sections(browser: Any) -> dict[str, list[Any]]:
    """Each result section's tiles, by modality, in page order."""
    from selenium.webdriver.common.by import By

    return {
        box.get_attribute("data-modality"): box.find_elements(By.CSS_SELECTOR, "li.tile")
        for box in browser.find_elements(By.CSS_SELECTOR, "#results section")
    }


def set_modalities(browser: Any, wanted: set[str]) -> None:
    from selenium.webdriver.common.by import By

    for box in browser.find_elements(By.CSS_SELECTOR, "input[name=modality]"):
        if box.is_selected() != (box.get_attribute("value") in wanted):
            box.click()


def test_page_offers_the_bundles_modalities(browser: Any, server: Any) -> None:
    from selenium.webdriver.common.by import By

    open_page(browser, server.url)
    boxes = browser.find_elements(By.CSS_SELECTOR, "input[name=modality]")
    assert sorted(b.get_attribute("value") for b in boxes) == ["image", "text"]
    assert all(b.is_selected() for b in boxes)
    assert browser.find_element(By.ID, "summary").text.startswith("6 items (3 image, 3 text)")
    # Every form control has an accessible label.
    for control in browser.find_elements(By.CSS_SELECTOR, "input"):
        name = control.get_attribute("id") or ""
        labelled = browser.find_elements(By.CSS_SELECTOR, f"label[for='{name}']") if name else []
        parent_label = control.find_elements(By.XPATH, "ancestor::label")
        assert labelled or parent_label, control.get_attribute("outerHTML")


def test_a_text_query_shows_the_matching_caption_first(browser: Any, server: Any) -> None:
    from selenium.webdriver.common.by import By

    open_page(browser, server.url)
    set_modalities(browser, {"text"})
    box = browser.find_element(By.ID, "query-text")
    box.send_keys("red car cat")
    browser.find_element(By.ID, "search-button").click()
    tiles = wait_for_tiles(browser)
    assert len(tiles) == 3
    assert {t.get_attribute("data-modality") for t in tiles} == {"text"}
    first = tiles[0]
    expected = server.items["texts"][0]
    assert int(first.get_attribute("data-id")) == expected["id"]
    assert first.find_element(By.CSS_SELECTOR, ".snippet").text == "a cat on a red car"
    distance = first.find_element(By.CSS_SELECTOR, ".distance")
    assert distance.get_attribute("data-distance") == "0" and distance.text == "distance 0"
    distances = [
        int(t.find_element(By.CSS_SELECTOR, ".distance").get_attribute("data-distance"))
        for t in tiles
    ]
    assert distances == sorted(distances)


def test_an_image_upload_shows_that_image_first_with_its_thumbnail(
    browser: Any, server: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    query = tmp_path / "query.png"
    query.write_bytes(png(1))
    open_page(browser, server.url)
    set_modalities(browser, {"image"})
    browser.find_element(By.ID, "query-file").send_keys(str(query))
    tiles = wait_for_tiles(browser)
    assert [t.get_attribute("data-modality") for t in tiles] == ["image"] * 3
    first = tiles[0]
    assert int(first.get_attribute("data-id")) == server.items["images"][1]["id"]
    assert first.find_element(By.CSS_SELECTOR, ".distance").get_attribute("data-distance") == "0"
    assert first.find_element(By.CSS_SELECTOR, ".name").text == "pic-1.png"
    img = first.find_element(By.CSS_SELECTOR, ".thumb img")
    # The thumbnail arrived from the API and decoded: a real picture, not a broken icon.
    WebDriverWait(browser, WAIT_S).until(
        lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
    )
    assert img.get_attribute("src").startswith("blob:")
    assert browser.execute_script("return arguments[0].naturalWidth", img) == 64
    assert img.get_attribute("alt") == "Image pic-1.png"
    assert browser.find_element(By.ID, "file-name").text == "query.png"


def test_api_errors_are_shown_to_the_user(browser: Any, server: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    bogus = tmp_path / "notes.png"
    bogus.write_bytes(b"these are not pixels")
    open_page(browser, server.url)
    browser.find_element(By.ID, "query-file").send_keys(str(bogus))
    error = browser.find_element(By.ID, "error")
    WebDriverWait(browser, WAIT_S).until(lambda d: error.is_displayed() and error.text)
    assert error.text.startswith("Unreadable media: file 'notes.png' is not a recognised image")
    # Nothing checked: the page says what to do instead of sending a request.
    browser.find_element(By.ID, "clear-file").click()
    set_modalities(browser, set())
    browser.find_element(By.ID, "query-text").send_keys("cat")
    browser.find_element(By.ID, "search-button").click()
    assert error.text == "Pick at least one kind of result to return."


def test_the_page_fits_a_narrow_screen(browser: Any, server: Any) -> None:
    from selenium.webdriver.common.by import By

    browser.set_window_size(360, 740)
    try:
        open_page(browser, server.url)
        browser.find_element(By.ID, "query-text").send_keys("dog beach")
        browser.find_element(By.ID, "search-button").click()
        assert len(wait_for_tiles(browser)) == 6
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0
    finally:
        browser.set_window_size(1200, 900)


def test_a_text_query_shows_a_section_per_kind_each_with_its_own_top_k(
    browser: Any, server: Any
) -> None:
    from selenium.webdriver.common.by import By

    open_page(browser, server.url)
    k = browser.find_element(By.ID, "k")
    k.clear()
    k.send_keys("2")
    search_text(browser, "red car cat")
    found = sections(browser)
    # Images first, then texts, each its own top 2: texts cannot crowd the pictures out.
    assert list(found) == ["image", "text"]
    assert [len(tiles) for tiles in found.values()] == [2, 2]
    assert {t.get_attribute("data-modality") for t in found["image"]} == {"image"}
    headings = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "#results section h2")]
    assert headings == ["Images (2)", "Texts (2)"]
    assert int(found["text"][0].get_attribute("data-id")) == server.items["texts"][0]["id"]
    assert browser.find_element(By.ID, "status").text == "Images 2 · Texts 2: 4 results"


def test_limits_come_from_the_server(browser: Any, server: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(browser, server.url)
    k = browser.find_element(By.ID, "k")
    WebDriverWait(browser, WAIT_S).until(lambda d: k.get_attribute("max") == str(MAX_K))
    text = browser.find_element(By.ID, "query-text")
    assert text.get_attribute("maxlength") == str(MAX_TEXT_CHARS)
    k.clear()
    k.send_keys(str(MAX_K + 1))
    text.send_keys("cat")
    browser.find_element(By.ID, "search-button").click()
    error = browser.find_element(By.ID, "error")
    assert error.text == f"Results of each kind must be a whole number from 1 to {MAX_K}."


def test_tiles_are_one_size_filled_by_their_picture_with_full_names_on_hover(
    browser: Any, server: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(browser, server.url)
    tiles = search_text(browser, "dog beach")
    sizes = {(t.size["width"], t.size["height"]) for t in tiles}
    assert len(sizes) == 1, sizes
    for tile in sections(browser)["image"]:
        img = tile.find_element(By.CSS_SELECTOR, ".thumb img")
        WebDriverWait(browser, WAIT_S).until(
            lambda d, img=img: d.execute_script("return arguments[0].naturalWidth", img)
        )
        thumb = tile.find_element(By.CSS_SELECTOR, ".thumb")
        assert img.size == thumb.size  # the picture fills its square (cropped, not boxed)
    long_tile = next(
        t for t in tiles if int(t.get_attribute("data-id")) == server.items["images"][2]["id"]
    )
    name = long_tile.find_element(By.CSS_SELECTOR, ".name")
    assert name.get_attribute("title") == LONG_NAME
    shown = browser.execute_script("return arguments[0].clientWidth", name)
    assert browser.execute_script("return arguments[0].scrollWidth", name) > shown  # cut


def test_a_tile_opens_its_details_and_more_like_this_searches_by_its_code(
    browser: Any, server: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(browser, server.url)
    set_modalities(browser, {"text", "image"})
    search_text(browser, "red car cat")
    first = sections(browser)["text"][0]
    expected = server.items["texts"][0]
    first.find_element(By.CSS_SELECTOR, "button.open").click()
    dialog = browser.find_element(By.ID, "detail")
    WebDriverWait(browser, WAIT_S).until(lambda d: dialog.is_displayed())
    code = browser.find_element(By.CSS_SELECTOR, "#detail-fields [data-field=code]")
    WebDriverWait(browser, WAIT_S).until(lambda d: code.text == expected["code"])
    assert browser.find_element(By.ID, "detail-title").text == f"Text #{expected['id']}"
    assert browser.find_element(By.ID, "detail-text").text == "a cat on a red car"
    field = {
        dd.get_attribute("data-field"): dd.text
        for dd in browser.find_elements(By.CSS_SELECTOR, "#detail-fields dd")
    }
    assert field["id"] == str(expected["id"]) and field["client id"] == "caption-0"
    assert field["album"] == "trips" and field["kind"] == "text"
    labels = browser.find_elements(By.CSS_SELECTOR, "#detail-labels li")
    assert [li.text for li in labels] == ["animal"]

    browser.find_element(By.ID, "more-like-this").click()
    tiles = wait_for_tiles(browser, status_start="Like #")
    assert not dialog.is_displayed()
    like = sections(browser)
    assert list(like) == ["image", "text"]
    # By its own code: the item itself comes first, at distance 0.
    top = like["text"][0]
    assert int(top.get_attribute("data-id")) == expected["id"]
    assert top.find_element(By.CSS_SELECTOR, ".distance").get_attribute("data-distance") == "0"
    assert len(tiles) == 6
    assert browser.find_element(By.ID, "query-text").get_attribute("value") == ""


def test_an_image_tile_shows_a_larger_picture(browser: Any, server: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(browser, server.url)
    search_text(browser, "dog beach")
    tile = sections(browser)["image"][0]
    thumb = tile.find_element(By.CSS_SELECTOR, ".thumb img")
    WebDriverWait(browser, WAIT_S).until(
        lambda d: d.execute_script("return arguments[0].naturalWidth", thumb)
    )
    tile.find_element(By.CSS_SELECTOR, "button.open").click()
    big = browser.find_element(By.CSS_SELECTOR, "#detail-media img")
    WebDriverWait(browser, WAIT_S).until(lambda d: big.is_displayed())
    assert big.size["width"] > 2 * thumb.size["width"]
    assert big.get_attribute("src") == thumb.get_attribute("src")
    browser.find_element(By.ID, "detail-close").click()


def test_the_page_is_usable_by_keyboard(browser: Any, server: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(browser, server.url)
    box = browser.find_element(By.ID, "query-text")
    box.send_keys("snow mountain night", Keys.ENTER)  # Enter in the field searches
    wait_for_tiles(browser)
    button = sections(browser)["text"][0].find_element(By.CSS_SELECTOR, "button.open")
    button.send_keys(Keys.ENTER)  # a tile is a button: Enter opens it
    dialog = browser.find_element(By.ID, "detail")
    WebDriverWait(browser, WAIT_S).until(lambda d: dialog.is_displayed())
    active = browser.switch_to.active_element
    assert active.get_attribute("id") == "more-like-this"  # focus moved into the dialog
    active.send_keys(Keys.ESCAPE)
    WebDriverWait(browser, WAIT_S).until(lambda d: not dialog.is_displayed())
    assert browser.switch_to.active_element == button  # and back to the tile
    assert button.get_attribute("aria-label").startswith("Details of text caption-")


def test_an_error_clears_the_previous_results(browser: Any, server: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(browser, server.url)
    assert search_text(browser, "red car")
    bogus = tmp_path / "notes.png"
    bogus.write_bytes(b"these are not pixels")
    browser.find_element(By.ID, "query-file").send_keys(str(bogus))
    error = browser.find_element(By.ID, "error")
    WebDriverWait(browser, WAIT_S).until(lambda d: error.is_displayed() and error.text)
    assert browser.find_elements(By.CSS_SELECTOR, "#results li.tile") == []
    assert browser.find_element(By.ID, "status").text == ""
