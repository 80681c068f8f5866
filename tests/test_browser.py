"""The web page in a real headless Chromium (Debian's, driven by Selenium; nothing is downloaded).

Needs: apt-get install -y chromium chromium-driver && pip install selenium
"""

import shutil
from pathlib import Path

import pytest
from serve_helpers import png_bytes, running_server

from vlalign.api import load
from vlalign.data.specs import build_source

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("no chromium: apt-get install -y chromium chromium-driver", allow_module_level=True)

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

SPEC = "shapes:n=32,seed=4"
ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-extensions", "--disable-sync",
                 "--no-first-run", "--window-size=1100,900", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager never runs, so nothing is downloaded.
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def test_search_and_upload_in_the_page(trained_tiny_run, browser, tmp_path):
    aligner, source = load(trained_tiny_run), build_source(SPEC)
    wait = WebDriverWait(browser, 60)
    with running_server(aligner, source, SPEC) as (_, _, url):
        browser.get(url)
        wait.until(lambda d: "images indexed" in d.find_element(By.ID, "health").text)

        query = browser.find_element(By.ID, "query")
        query.send_keys("a blue square")
        k = browser.find_element(By.ID, "k")
        k.clear()
        k.send_keys("4")
        browser.find_element(By.ID, "search-button").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results figure.result")) == 4)
        wait.until(lambda d: all(i.get_property("naturalWidth") > 0 for i in d.find_elements(By.CSS_SELECTOR, "#results img")))
        shown = [int(f.get_attribute("data-id")) for f in browser.find_elements(By.CSS_SELECTOR, "#results figure")]
        sims = aligner.encode_text(["a blue square"]) @ aligner.encode_image([source[i].image for i in range(len(source))]).t()
        assert shown == sims[0].topk(4).indices.tolist()

        upload = tmp_path / "upload.png"
        upload.write_bytes(png_bytes(source[1].image))
        browser.find_element(By.ID, "file").send_keys(str(upload))
        labels = browser.find_element(By.ID, "labels")
        labels.clear()
        labels.send_keys("red circle, blue square, cyan star")
        browser.find_element(By.ID, "classify-button").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#labels-table tr.label-row")) == 3)
        rendered = {r.get_attribute("data-label") for r in browser.find_elements(By.CSS_SELECTOR, "tr.label-row")}
        assert rendered == {"red circle", "blue square", "cyan star"}
        assert browser.find_element(By.ID, "classify-error").text == ""

        ARTIFACTS.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "serve-page.png"))
