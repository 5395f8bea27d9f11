"""Screenshots of the search page for the README, taken with headless Chromium (Selenium).

    .venv/bin/hashbridge demo --workdir DIR        # serves the demo on http://127.0.0.1:8000
    .venv/bin/python scripts/screenshots.py --url http://127.0.0.1:8000 --out docs

Writes search-text.png (a text query: a section per kind of result), search-detail.png (a
clip's detail view) and search-more-like-this.png (the items nearest to that clip's code).
Uses Debian's chromium and chromium-driver, as tests/service/test_search_page.py does.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WAIT_S = 60


def browser(profile: Path, width: int, height: int) -> Any:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def wait_for_results(driver: Any, status_start: str = "") -> None:
    def done(d: Any) -> bool:
        status = d.find_element(By.ID, "status").text
        return status.startswith(status_start) and status.endswith("results")

    WebDriverWait(driver, WAIT_S).until(done)
    # Every thumbnail decoded (or marked missing), so the picture is complete.
    WebDriverWait(driver, WAIT_S).until(
        lambda d: d.execute_script(
            "return [...document.querySelectorAll('.thumb')].every("
            "t => t.classList.contains('missing') || "
            "(t.querySelector('img').complete && t.querySelector('img').naturalWidth))"
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--query", default="a red circle moves to the right")
    parser.add_argument("--k", type=int, default=6, help="results of each kind")
    parser.add_argument("--api-key", help="when the service protects reads")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        driver = browser(Path(profile), 1280, 1500)
        try:
            driver.get(args.url + "/")
            WebDriverWait(driver, WAIT_S).until(
                lambda d: d.find_elements(By.CSS_SELECTOR, "input[name=modality]")
            )
            if args.api_key:
                driver.find_element(By.ID, "key-box").click()
                driver.find_element(By.ID, "api-key").send_keys(args.api_key)
            k = driver.find_element(By.ID, "k")
            k.clear()
            k.send_keys(str(args.k))
            driver.find_element(By.ID, "query-text").send_keys(args.query)
            driver.find_element(By.ID, "search-button").click()
            wait_for_results(driver)
            driver.save_screenshot(str(args.out / "search-text.png"))

            tiles = driver.find_elements(By.CSS_SELECTOR, "section[data-modality=video] li.tile")
            tiles = tiles or driver.find_elements(By.CSS_SELECTOR, "#results li.tile")
            tiles[0].find_element(By.CSS_SELECTOR, "button.open").click()
            code = driver.find_element(By.CSS_SELECTOR, "#detail-fields [data-field=code]")
            WebDriverWait(driver, WAIT_S).until(lambda d: code.text != "loading…")
            driver.save_screenshot(str(args.out / "search-detail.png"))

            driver.find_element(By.ID, "more-like-this").click()
            wait_for_results(driver, "Like ")
            driver.save_screenshot(str(args.out / "search-more-like-this.png"))
        finally:
            driver.quit()
    for name in ("search-text.png", "search-detail.png", "search-more-like-this.png"):
        print(args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
