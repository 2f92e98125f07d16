"""erasebook.paper: the paper's transcribed tables (data/paper/mllmeraser_tables.json) load, look up and pivot.

The spot values below were read again from the paper's full text (MLLMEraser, Tables 1-3 and 5-10), not from the
JSON, so they check the transcription.
"""

from __future__ import annotations

import json
import math

import pytest

from erasebook import paper
from erasekit.evaluate import GROUPS, MODES, TASKS
from erasekit.tables import render_table

EXPECTED = {  # name -> (models, forget_pct, modes, number of printed rows)
    "table1": (["LLaVA-1.5-7B", "Qwen-2.5-VL-7B"], 5, ["VQA"], 14),
    "table2": (["Qwen-2.5-VL-7B"], 5, ["VQA"], 4),
    "table3": (["LLaVA-1.5-7B"], 10, ["VQA"], 5),
    "table5": (["LLaVA-1.5-7B"], 10, ["VQA", "QA"], 12),
    "table6": (["LLaVA-1.5-7B"], 5, ["VQA", "QA"], 12),
    "table7": (["Qwen-2.5-VL-7B"], 5, ["VQA", "QA"], 12),
    "table8": (["LLaVA-1.5-7B"], 15, ["VQA"], 8),
    "table9": (["LLaVA-1.5-7B"], 10, ["VQA"], 4),
    "table10": (["LLaVA-1.5-7B"], 10, ["VQA"], 3),
}


def cell(name, method, task, split, mode="VQA", model=None):
    f = dict(method=method, task=task, split=split, mode=mode)
    if model is not None:
        f["model"] = model
    df = paper.paper_table(name, **f)
    assert len(df) == 1, (name, f, df)
    return df["value"].iloc[0]


def test_file_and_tables():
    d = paper.load_paper_tables()
    assert "MLLMEraser" in d["source"]["title"]
    assert set(d["tables"]) == set(EXPECTED)
    for name, (models, pct, modes, n_rows) in EXPECTED.items():
        t = d["tables"][name]
        assert (t["models"], t["forget_pct"], t["modes"]) == (models, pct, modes), name
        assert len(t["rows"]) == 12 * n_rows, name
        assert t["caption"] and t["notes"], name


def test_rows_have_keys_and_valid_enums():
    d = paper.load_paper_tables()
    for name, t in d["tables"].items():
        seen = set()
        for r in t["rows"]:
            assert set(paper.ROW_KEYS) <= set(r), (name, r)
            assert r["mode"] in MODES and r["task"] in TASKS and r["split"] in GROUPS, (name, r)
            assert r["model"] in t["models"] and r["method"] in t["methods"], (name, r)
            key = (r["method"], r["model"], r["mode"], r["task"], r["split"])
            assert key not in seen, (name, key)
            seen.add(key)
            if r["value"] is None:
                assert r.get("raw") and r.get("note"), (name, r)  # an unreadable cell says what was printed
                continue
            assert isinstance(r["value"], float), (name, r)
            hi = 1.0 if r["task"] == "generation" else 100.0
            assert 0.0 <= r["value"] <= hi, (name, r)


def test_spot_values_from_the_paper_text():
    # Table 1, LLaVA-1.5-7B (5% Forget)-VQA, Ours: "11.20 25.20 43.54 45.43 0.106 0.209 0.592 0.311 6.00 14.00 ..."
    assert cell("table1", "Ours", "classification", "Fgt", model="LLaVA-1.5-7B") == 11.20
    assert cell("table1", "Ours", "cloze", "Fgt", model="LLaVA-1.5-7B") == 6.00
    # Table 1, Qwen-2.5-VL-7B (5% Forget)-VQA, Vanilla, cloze Cele
    assert cell("table1", "Vanilla", "cloze", "Cele", model="Qwen-2.5-VL-7B") == 26.80
    # Table 2, Input-unaware steering, classification Cele
    assert cell("table2", "Input-unaware steering", "classification", "Cele") == 4.05
    # Table 3, epsilon = 32/255, generation Fgt
    assert cell("table3", "eps=32/255", "generation", "Fgt") == 0.040
    # Table 5, LLaVA-1.5-7B (10% Forget)-QA, Ours, generation Ret
    assert cell("table5", "Ours", "generation", "Ret", mode="QA") == 0.662
    # Table 6, LLaVA (5% Forget)-VQA, Ours: classification Fgt printed 7.20 (Table 1 prints 11.20 for the same row)
    assert cell("table6", "Ours", "classification", "Fgt") == 7.20
    # Table 7, Qwen (5% Forget)-QA: Ours classification Fgt, NPO cloze Cele
    assert cell("table7", "Ours", "classification", "Fgt", mode="QA") == 18.60
    assert cell("table7", "NPO", "cloze", "Cele", mode="QA") == 12.09
    # Table 8, LLaVA (15% Forget)-VQA, MANU cloze Test
    assert cell("table8", "MANU", "cloze", "Test") == 14.67
    # Table 9, variant-1 generation Cele is printed "0.30.9": kept as NaN with the raw text
    assert math.isnan(cell("table9", "variant-1", "generation", "Cele"))
    raw = [r for r in paper.load_paper_tables()["tables"]["table9"]["rows"] if r["value"] is None]
    assert [r["raw"] for r in raw] == ["0.30.9"]
    # Table 10, Ours-MLP classification Ret; Ours generation Test printed 0.200
    assert cell("table10", "Ours-MLP", "classification", "Ret") == 38.62
    assert cell("table10", "Ours", "generation", "Test") == 0.200


def test_filters():
    df = paper.paper_table("table6", method=["Ours", "Vanilla"], mode="QA")
    assert len(df) == 24 and set(df["method"]) == {"Ours", "Vanilla"}
    assert (df["forget_pct"] == 5).all() and (df["table"] == "table6").all()
    with pytest.raises(KeyError):
        paper.paper_table("table4")  # memory table lives under other_tables
    with pytest.raises(KeyError):
        paper.paper_table("table1", colour="red")


def test_results_table_layout():
    t = paper.paper_results_table("table1")
    assert t.shape == (7, 12)
    assert t.index.names == ["mode", "method"] and t.columns.names == ["task", "split"]
    assert list(t.columns) == [(k, g) for k in TASKS for g in GROUPS]
    assert list(t.index) == [("VQA", m) for m in
                             ["Vanilla", "GA", "GA_Diff", "KL_Min", "NPO", "MMUnlearner", "Ours"]]
    assert t.attrs["model"] == "LLaVA-1.5-7B" and t.attrs["forget_pct"] == 5
    assert t.loc[("VQA", "Ours"), ("generation", "Fgt")] == 0.106

    q = paper.paper_results_table("table1", model="Qwen-2.5-VL-7B")
    assert q.loc[("VQA", "Ours"), ("classification", "Fgt")] == 19.20

    both = paper.paper_results_table("table6")
    assert both.shape == (12, 12)
    assert list(both.index.get_level_values("mode").unique()) == ["VQA", "QA"]
    assert both.loc[("QA", "Ours"), ("cloze", "Fgt")] == 10.00

    md = render_table(both)
    assert isinstance(md, str) and "Ours" in md
    with pytest.raises(KeyError):
        paper.paper_results_table("table2", model="LLaVA-1.5-7B")


def test_explicit_path(tmp_path):
    src = paper.load_paper_tables()
    small = {**src, "tables": {"table10": src["tables"]["table10"]}}
    p = tmp_path / "t.json"
    p.write_text(json.dumps(small))
    assert set(paper.load_paper_tables(p)["tables"]) == {"table10"}
    assert paper.paper_results_table("table10", path=p).shape == (3, 12)
