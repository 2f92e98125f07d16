"""The built book (book/_build/html): every chapter page exists, shows its figures and no error output.

Run by scripts/test.sh after it builds the site (``pytest -m book``). Without a built site the tests skip, unless
``ERASEKIT_REQUIRE_BOOK=1`` (set by scripts/test.sh), where a missing site fails. The page checks run twice: on the
HTML source, and in headless Chromium through selenium (skipped when chromium / chromedriver are not installed).
"""

from __future__ import annotations

import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytestmark = pytest.mark.book

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(os.environ.get("ERASEKIT_BOOK_HTML", ROOT / "book" / "_build" / "html"))
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# An exception's output: a traceback, or "SomethingError: message" / "SomethingException: ..." in an output cell.
ERROR = re.compile(r"Traceback \(most recent call last\)|\b[A-Z]\w*(Error|Exception): ")


def _require_site():
    if not (SITE / "index.html").exists():
        if os.environ.get("ERASEKIT_REQUIRE_BOOK") == "1":
            pytest.fail(f"no built book at {SITE} (jupyter-book build failed?)")
        pytest.skip(f"no built book at {SITE}; run scripts/main.sh or scripts/test.sh")


def _page(nb: Path) -> Path:
    return SITE / "notebooks" / (nb.stem + ".html")


class _Outputs(HTMLParser):
    """Collects <img> tags and the text inside output areas (div.cell_output) of a myst-nb page."""

    def __init__(self):
        super().__init__()
        self.images, self.output_text, self._depth = 0, [], 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images += 1
        if self._depth:
            self._depth += tag == "div"
        elif tag == "div" and "cell_output" in (a.get("class") or ""):
            self._depth = 1

    def handle_endtag(self, tag):
        if self._depth and tag == "div":
            self._depth -= 1

    def handle_data(self, data):
        if self._depth:
            self.output_text.append(data)


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_page_has_figures_and_no_errors(nb):
    _require_site()
    page = _page(nb)
    assert page.exists(), f"{page} missing: is {nb.name} in book/_toc.yml?"
    p = _Outputs()
    p.feed(page.read_text(encoding="utf-8"))
    assert p.images >= 1, f"{page.name}: no figure (img tag)"
    text = "".join(p.output_text)
    assert text.strip(), f"{page.name}: no output at all; was the notebook executed before the build?"
    m = ERROR.search(text)
    assert m is None, f"{page.name}: error output: ...{text[max(0, m.start() - 200):m.end() + 200]}..."


def _driver():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("chromium / chromedriver not installed (scripts/setup.sh installs them with apt as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=opts)


@pytest.fixture(scope="module")
def browser():
    _require_site()
    drv = _driver()
    yield drv
    drv.quit()


def test_browser_renders_every_page(browser):
    from selenium.webdriver.common.by import By

    browser.get((SITE / "index.html").as_uri())
    assert "unlearning" in browser.title.lower() or "unlearning" in browser.page_source.lower()
    for nb in NOTEBOOKS:
        browser.get(_page(nb).as_uri())
        imgs = browser.find_elements(By.CSS_SELECTOR, "div.cell_output img")
        assert imgs, f"{nb.stem}: no figure rendered"
        # naturalWidth > 0: the image file was found and decoded, not a broken link
        broken = [i.get_attribute("src") for i in imgs
                  if not browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i)]
        assert not broken, f"{nb.stem}: broken images {broken}"
        outputs = " ".join(e.text for e in browser.find_elements(By.CSS_SELECTOR, "div.cell_output"))
        m = ERROR.search(outputs)
        assert m is None, f"{nb.stem}: error output in the rendered page: {outputs[max(0, m.start() - 200):m.end() + 200]}"
