"""Committed notebooks carry no outputs or execution counts, and follow the book's layout: a first markdown cell
with "What you will learn" and one cell tagged ``parameters``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks in notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_clean(path):
    nb = json.loads(path.read_text())
    dirty = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
             and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, (f"{path.name}: cells {dirty} have outputs or execution counts; clear them before committing "
                       f"(jupyter nbconvert --clear-output --inplace {path.name})")
    ids = [c.get("id") for c in nb["cells"]]
    missing = [i for i, v in enumerate(ids) if not v]
    assert not missing and len(set(ids)) == len(ids), (
        f"{path.name}: cells {missing} have no id (or ids repeat); nbformat 4.5 needs one per cell "
        "(python -c 'import nbformat as n, sys; nb = n.read(sys.argv[1], 4); n.validator.normalize(nb); "
        "n.write(nb, sys.argv[1])' FILE)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_layout(path):
    nb = json.loads(path.read_text())
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown" and "what you will learn" in "".join(first["source"]).lower(), \
        f"{path.name}: the first cell must be markdown that says what you will learn"
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged 'parameters', found {len(tagged)}"
    assert path.name[:2].isdigit() and path.name[2] == "_", f"{path.name}: name notebooks NN_topic.ipynb"
