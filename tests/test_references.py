"""The book's citations resolve: every {cite} key in the chapters and book pages is in book/references.bib, and no
entry there is left anonymous (an author list is what the reader looks the paper up by)."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITE = re.compile(r"\{cite[a-z:]*\}`([^`]+)`")


def _sources():
    for p in sorted((ROOT / "book").glob("*.md")):
        yield p.name, p.read_text()
    for p in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(p.read_text())["cells"]
        yield p.name, "\n".join("".join(c["source"]) for c in cells)


def _bib():
    text = (ROOT / "book" / "references.bib").read_text()
    entries = re.split(r"\n(?=@)", text.strip())
    return {re.match(r"@\w+\{([^,]+),", e).group(1): e for e in entries}


def test_every_cited_key_is_in_the_bibliography():
    bib = _bib()
    missing = {(name, key.strip()) for name, text in _sources() for keys in CITE.findall(text)
               for key in keys.split(",") if key.strip() not in bib}
    assert not missing, f"cited but not in book/references.bib: {sorted(missing)}"


def test_every_entry_names_its_authors_and_year():
    for key, entry in _bib().items():
        author = re.search(r"author\s*=\s*\{(.+)\},?\s*$", entry, re.M)
        assert author and "anonymous" not in author.group(1).lower(), f"{key}: no real author list"
        assert re.search(r"year\s*=\s*\{\d{4}\}", entry), f"{key}: no year"
