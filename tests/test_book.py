"""The built book (book/_build/html): every chapter page exists, shows its figures and no error output, and reads
as a publication: results tables are real <table>s (no walls of pipe text), no local paths, tracebacks, NaN or raw
LaTeX in what a reader sees, math served from the site itself (MathJax in _static, no CDN), figures that fit the
content column.

Run by scripts/test.sh after it builds the site (``pytest -m book``). Without a built site the tests skip, unless
``ERASEKIT_REQUIRE_BOOK=1`` (set by scripts/test.sh), where a missing site fails. The page checks run twice: on the
HTML source, and in headless Chromium through selenium (skipped when chromium / chromedriver are not installed).
The Chromium run also writes full-page screenshots of the landing page, 05 and 06 at 1400 px wide into
book/_build/screenshots/ (git-ignored; ``ERASEKIT_BOOK_SCREENSHOTS`` overrides the folder) for a reviewer to look at.
"""

from __future__ import annotations

import json
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
SHOTS = Path(os.environ.get("ERASEKIT_BOOK_SCREENSHOTS", ROOT / "book" / "_build" / "screenshots"))
# Every page a reader reaches from the table of contents: the landing page, the chapters, the back matter.
PAGES = ["intro"] + [f"notebooks/{nb.stem}" for nb in NOTEBOOKS] + ["references"]
# Screenshots for review (landing page, Table 1, the separability chapter) and the window width they are taken at.
SHOT_PAGES = {"landing": "intro", "05": "notebooks/05_", "06": "notebooks/06_"}
WIDTH = 1400
# What a reader must never see in a page's text: a local path, an exception, a missing value, LaTeX that MathJax
# did not typeset (inline \( \), display \[ \] or $$). Checked on the whole article, prose, code and outputs.
FORBIDDEN = {"local path": re.compile(r"/(tmp|work|root)/"), "traceback": re.compile(r"Traceback"),
             "NaN": re.compile(r"\bNaN\b"), "raw LaTeX": re.compile(r"\\\(|\\\[|\$\$")}
# A paragraph with this many "|" is a Markdown table that did not render (a wall of pipe text).
MAX_PIPES = 20


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
        assert m is None, (
            f"{nb.stem}: error output in the rendered page: {outputs[max(0, m.start() - 200) : m.end() + 200]}"
        )


# ----------------------------------------------------------------------------------------------------------------
# what a reader sees: real tables, no paths / tracebacks / NaN / raw LaTeX, local math, figures that fit
# ----------------------------------------------------------------------------------------------------------------
def _html(name: str) -> Path:
    return SITE / f"{name}.html"


def _snippet(text: str, m: re.Match, width: int = 80) -> str:
    return " ".join(text[max(0, m.start() - width):m.end() + width].split())


def _problems(name: str, text: str, blocks: list[str]) -> list[str]:
    """Everything wrong with a page's visible text (``text``: the article; ``blocks``: its paragraphs / outputs)."""
    found = []
    for what, rx in FORBIDDEN.items():
        for m in list(rx.finditer(text))[:3]:
            found.append(f"{name}: {what} {m.group(0)!r} in ...{_snippet(text, m)}...")
    for b in blocks:
        if b.count("|") > MAX_PIPES:
            found.append(f"{name}: a paragraph with {b.count('|')} '|' (a Markdown table that did not render): "
                         f"{' '.join(b.split())[:160]}...")
    return found


def _soup(name: str):
    bs4 = pytest.importorskip("bs4")  # a dependency of the book's theme (pydata-sphinx-theme)
    page = _html(name)
    assert page.exists(), f"{page} missing: is it in book/_toc.yml?"
    return bs4.BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")


def _source_text(name: str) -> tuple[str, list[str]]:
    """The article's text as the HTML source has it, without scripts and without the math elements that MathJax
    typesets (their \\( \\) delimiters are MathJax's input, not raw LaTeX); and its paragraphs and output blocks."""
    soup = _soup(name)
    art = soup.find("article") or soup.body
    for el in art.find_all(["script", "style"]):
        el.decompose()
    for el in art.find_all(class_="math"):
        el.decompose()
    blocks = [el.get_text(" ") for el in art.find_all("p")]
    blocks += [el.get_text(" ") for el in art.select("div.cell_output pre, div.cell_output p")]
    return art.get_text(" "), blocks


@pytest.mark.parametrize("name", PAGES)
def test_page_text_reads_clean(name):
    """No local path, traceback, NaN, raw LaTeX or paragraph of pipe text on the page (HTML source)."""
    _require_site()
    text, blocks = _source_text(name)
    problems = _problems(name, text, blocks)
    assert not problems, "\n".join(problems)


def test_landing_page_states_the_finding():
    """The landing page says what the book found: chapter 11's findings list (erasebook.findings, verdicts by rule
    from the recorded numbers), pasted as is, with its numbers."""
    _require_site()
    text, _ = _source_text("intro")
    assert "What we found" in text and "erasekit" in text and "paper" in text, \
        "the landing page (book/intro.md) must state the finding up front"
    landing = _soup("intro").select("div.erasekit-findings li")
    chapter = _soup("notebooks/11_what_we_found").select("div.cell_output li")
    assert landing, "no findings list on the landing page (the {glue} findings directive from chapter 11)"

    def norm(items):  # the chapter's Markdown output gets typographic quotes, the pasted HTML keeps straight ones
        return [" ".join(li.get_text(" ").replace("\u2019", "'").split()) for li in items]

    assert norm(landing) == norm(chapter)[:len(landing)] and len(landing) >= 4, \
        "the landing page's findings differ from chapter 11's"
    found = " ".join(norm(landing))
    assert re.search(r"\b(selects|does not select)\b", found) and len(re.findall(r"\d+(?:\.\d+)?\s*%", found)) >= 8


def _code(nb: Path) -> str:
    return "".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code")


# The chapters that show a results table (erasekit.tables.render_table)
TABLE_NOTEBOOKS = [nb for nb in NOTEBOOKS if "render_table(" in _code(nb)]
# Readable in the page column: at most this many value columns (+ the row labels) per table (erasebook.report).
MAX_COLUMNS = 10
# A figure's PNG has at least this many pixels per pixel shown (1.5: >= 150 dpi at the book's 100 dpi layout).
MIN_PIXEL_RATIO = 1.5


@pytest.mark.parametrize("nb", TABLE_NOTEBOOKS, ids=[p.stem for p in TABLE_NOTEBOOKS])
def test_results_tables_are_tables(nb):
    """A chapter that renders a results table (render_table) shows it as an HTML <table> in its outputs."""
    _require_site()
    soup = _soup(f"notebooks/{nb.stem}")
    assert soup.select("div.cell_output table"), f"{nb.stem}: render_table is called but no <table> in the outputs"


@pytest.mark.parametrize("name", PAGES)
def test_tables_fit_the_column(name):
    """Every table on every page (outputs and prose) has at most MAX_COLUMNS value cells in a row: wider ones are
    split (erasebook.report.column_parts) or transposed."""
    _require_site()
    wide = []
    for t in _soup(name).select("article table"):
        widths = [len(tr.find_all("td")) for tr in t.find_all("tr")]
        if max(widths, default=0) > MAX_COLUMNS:
            head = " | ".join(c.get_text(" ", strip=True)[:14] for c in t.find("tr").find_all(["th", "td"]))
            wide.append(f"{max(widths)} value columns: {head[:160]}")
    assert not wide, f"{name}: tables wider than {MAX_COLUMNS} columns (split them):\n" + "\n".join(wide)


def test_math_is_served_from_the_site():
    """MathJax loads from the built site (_static/mathjax), never from a CDN, on every page that has math."""
    _require_site()
    loaders = []
    for name in PAGES:
        soup = _soup(name)
        srcs = [s.get("src", "") for s in soup.find_all("script") if "mathjax" in s.get("src", "").lower()]
        inline = " ".join(s.get_text() for s in soup.find_all("script") if not s.get("src"))
        remote = re.search(r"https?://[^\s\"']*mathjax", inline, re.I)
        assert remote is None, f"{name}: an inline script loads MathJax from {remote.group(0)}"
        if soup.select("article .math"):
            assert srcs, f"{name}: has math but loads no MathJax"
        for src in srcs:
            assert "://" not in src and not src.startswith("//"), f"{name}: MathJax from {src} (not the site itself)"
            target = (_html(name).parent / src.split("?")[0]).resolve()
            assert target.is_file(), f"{name}: MathJax script {src} is not in the built site ({target})"
            loaders.append(target)
    assert (SITE / "_static" / "mathjax" / "tex-chtml.js").is_file(), \
        "no _static/mathjax in the built site: is sphinx-mathjax-offline installed and in book/_config.yml?"
    assert all(t.parent.name == "mathjax" and t.parent.parent.name == "_static" for t in loaders), loaders


# ----- the same, in headless Chromium: what the reader's browser actually shows ------------------------------------
_TYPESET = """
const done = arguments[arguments.length - 1];
if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
  MathJax.startup.promise.then(() => done(true), () => done(false));
} else { done(null); }
"""

_READ = """
const art = document.querySelector('article') || document.body;
const blocks = Array.from(art.querySelectorAll('p, div.cell_output pre')).map(e => e.innerText);
const w = art.getBoundingClientRect().width;
const figs = Array.from(art.querySelectorAll('div.cell_output img')).map(i => ({
  src: i.getAttribute('src'), width: i.getBoundingClientRect().width, natural: i.naturalWidth}));
const tables = Array.from(art.querySelectorAll('table')).map(t => ({
  width: t.getBoundingClientRect().width, scroll: t.parentElement.scrollWidth,
  head: (t.querySelector('tr') || t).innerText.slice(0, 120)}));
return {text: art.innerText, blocks: blocks, article_width: w, figures: figs, tables: tables,
        math: art.querySelectorAll('.math').length, typeset: art.querySelectorAll('mjx-container').length};
"""


def _open(browser, name: str) -> dict:
    browser.get(_html(name).as_uri())
    browser.set_script_timeout(60)
    typeset = browser.execute_async_script(_TYPESET)
    info = browser.execute_script(_READ)
    info["mathjax"] = typeset
    return info


@pytest.fixture(scope="module")
def reader(browser):
    """The browser at the width the screenshots are taken at, and each page read once (typeset, measured)."""
    browser.set_window_size(WIDTH, 1000)
    cache: dict[str, dict] = {}

    def read(name: str) -> dict:
        if name not in cache:
            cache[name] = _open(browser, name)
        return cache[name]

    return read


def test_browser_pages_read_clean(reader):
    """Rendered text: no local path, traceback, NaN, untypeset LaTeX or pipe-text table on any page."""
    problems = []
    for name in PAGES:
        info = reader(name)
        problems += _problems(name, info["text"], info["blocks"])
        if info["math"]:
            if info["mathjax"] is not True or info["typeset"] < info["math"]:
                problems.append(f"{name}: {info['math']} math elements, {info['typeset']} typeset by MathJax "
                                f"(MathJax loaded: {info['mathjax']})")
    assert not problems, "\n".join(problems)


def test_browser_figures_fit_the_column(reader):
    """Each chapter shows at least one figure that is drawn (naturalWidth > 0) and fits the content column."""
    bad = []
    for nb in NOTEBOOKS:
        info = reader(f"notebooks/{nb.stem}")
        w = info["article_width"]
        fitting = [f for f in info["figures"] if f["natural"] > 0 and 0 < f["width"] <= w + 0.5]
        if not fitting:
            bad.append(f"{nb.stem}: no figure fits the {w:.0f}px column: "
                       + (", ".join(f"{f['src']} {f['width']:.0f}px" for f in info["figures"]) or "no figures"))
    assert not bad, "\n".join(bad)


def test_browser_figures_are_sharp(reader):
    """Every drawn figure has at least MIN_PIXEL_RATIO image pixels per pixel shown (>= 150 dpi: erasebook.plots.hires),
    so it stays sharp when the reader zooms."""
    blurry = []
    for nb in NOTEBOOKS:
        for f in reader(f"notebooks/{nb.stem}")["figures"]:
            if f["natural"] > 0 and f["width"] > 0 and f["natural"] < MIN_PIXEL_RATIO * f["width"] - 1:
                blurry.append(f"{nb.stem}: {f['src']} {f['natural']}px shown at {f['width']:.0f}px")
    assert not blurry, "figures below 150 dpi (call erasebook.plots.hires() in the chapter):\n" + "\n".join(blurry)


def test_browser_tables_fit_the_column(reader):
    """No table is wider than the content column at 1400 px (nothing the reader must scroll sideways to see)."""
    wide = []
    for name in PAGES:
        info = reader(name)
        for t in info["tables"]:
            if max(t["width"], t["scroll"]) > info["article_width"] + 1:
                wide.append(f"{name}: {max(t['width'], t['scroll']):.0f}px in a {info['article_width']:.0f}px column: "
                            + " ".join(t["head"].split())[:100])
    assert not wide, "\n".join(wide)


def _full_page_png(browser) -> bytes:
    """A PNG of the whole page at the window's width (Chrome DevTools capture beyond the viewport)."""
    import base64

    dims = browser.execute_script("return [window.innerWidth, document.documentElement.scrollHeight]")
    try:
        shot = browser.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": dims[0], "height": min(dims[1], 30000), "scale": 1}})
        return base64.b64decode(shot["data"])
    except Exception:  # not a Chromium driver: the visible window only
        return browser.get_screenshot_as_png()


def test_browser_screenshots(browser, reader):
    """Full-page screenshots, 1400 px wide, of the landing page, 05 and 06 for a reviewer (book/_build/screenshots)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    written = []
    for label, prefix in SHOT_PAGES.items():
        names = [n for n in PAGES if n == prefix or n.startswith(prefix)]
        assert names, f"no page for {label} ({prefix})"
        browser.set_window_size(WIDTH, 1000)
        browser.get(_html(names[0]).as_uri())  # the landing page: intro (index.html only redirects to it)
        browser.execute_async_script(_TYPESET)
        browser.execute_script("window.scrollTo(0, 0)")
        width = browser.execute_script("return window.innerWidth")
        assert abs(width - WIDTH) <= 20, f"window is {width}px wide, not {WIDTH}"
        out = SHOTS / ("landing.png" if label == "landing" else f"{Path(names[0]).name}.png")
        out.write_bytes(_full_page_png(browser))
        assert out.stat().st_size > 10_000, f"{out}: an empty screenshot?"
        written.append(out)
    print("screenshots:", *written, sep="\n  ")
