"""erasekit.tables: the Table-1 layout, category shares and their Markdown / HTML / Styler rendering."""

import re

import pandas as pd
import pytest

from erasekit.evaluate import GROUPS
from erasekit.scoring import CATEGORIES
from erasekit.tables import TASK_GROUPS, category_table, render_table, results_table


def _toy_df():
    recs = []
    for method, cls_ok, rouge in (("Vanilla", 1, 0.6), ("Ours", 0, 0.1)):
        for split in GROUPS:
            ok = cls_ok if split in ("Fgt", "Test") else 1
            recs += [{"method": method, "split": split, "mode": "VQA", "task": "classification", "score": ok,
                      "category": "correct"},
                     {"method": method, "split": split, "mode": "VQA", "task": "classification", "score": 0,
                      "category": "wrong"},
                     {"method": method, "split": split, "mode": "VQA", "task": "generation", "score": rouge,
                      "category": "wrong"},
                     {"method": method, "split": split, "mode": "VQA", "task": "cloze", "score": 1,
                      "category": "correct"}]
    return pd.DataFrame(recs)


def test_results_table_layout_and_render():
    t = results_table(_toy_df())
    assert list(t.index) == [("VQA", "Vanilla"), ("VQA", "Ours")]
    assert t.loc[("VQA", "Vanilla"), ("classification", "Fgt")] == 50.0
    assert t.loc[("VQA", "Ours"), ("classification", "Fgt")] == 0.0
    assert t.loc[("VQA", "Ours"), ("generation", "Ret")] == pytest.approx(0.1)
    assert t.loc[("VQA", "Ours"), ("cloze", "Cele")] == 100.0
    md = render_table(t)
    lines = md.splitlines()
    # a valid Markdown table: ONE header row, then the delimiter row, then the body (no second header row)
    assert lines[0].startswith("| Models | Cls Fgt ↓ | Cls Test ↓ | Cls Ret ↑ | Cls Cele ↑ | Gen Fgt ↓")
    assert "Cloze Cele ↑" in lines[0]
    assert re.fullmatch(r"\|(:?-{3,}:?\|){13}", lines[1])
    assert all(line.count("|") == 14 for line in lines)
    assert lines[2] == "| **VQA** |" + " |" * 12
    # Ours forgets generation by breaking it (Ret 0.1 against 0.6): out of the retain budget, not bolded for Fgt/Test
    assert lines[4].startswith("| Ours | **0.00** | **0.00** | 50.00 | 50.00 | 0.100 | 0.100 | 0.100")
    assert lines[3].startswith("| Vanilla | 50.00 | 50.00 | 50.00 | 50.00 | 0.600 | 0.600 | **0.600**")
    html = render_table(t, fmt="html")
    assert html.startswith("<table") and html.rstrip().endswith("</table>")
    assert html.count("<tr") == 2 + 1 + 2  # two header rows, one mode row, two methods
    assert '<th colspan="4">Classification Accuracy (%)</th>' in html and "<th>Fgt ↓</th>" in html
    assert "<tr><th>Ours</th><td><strong>0.00</strong></td><td><strong>0.00</strong></td><td>50.00</td>" in html
    styler = render_table(t, fmt="styler")
    shtml = styler.to_html()
    assert "font-weight: bold" in shtml and "<table" in shtml
    assert "0.100" in shtml and "0.1000" not in shtml  # rounded like the other forms
    assert "Fgt ↓" in shtml
    with pytest.raises(ValueError):
        render_table(t, fmt="latex")
    acc = render_table(t, tasks=TASK_GROUPS["accuracy"]).splitlines()
    assert acc[0].count("|") == 10 and "Gen" not in acc[0] and "Cloze Cele ↑" in acc[0]  # 8 value columns
    assert render_table(t, "html", tasks=["generation"]).count("<td") == 8  # 2 methods x 4 groups
    with pytest.raises(ValueError, match="not in the table"):
        render_table(t, tasks=["vqa"])
    cats = category_table(_toy_df())
    assert list(cats.columns) == list(CATEGORIES)
    assert cats.loc[("Ours", "VQA", "Fgt", "classification"), "wrong"] == 50.0
    assert cats.loc[("Ours", "VQA", "Fgt", "generation"), "wrong"] == 100.0


def test_best_at_forgetting_only_within_the_retain_budget():
    """A method that zeroes the forget column by wrecking retain is not bolded as best at forgetting; the best
    among those that keep retain (within RETAIN_BUDGET of the block's best Ret) is."""
    from erasekit.tables import RETAIN_BUDGET

    cols = pd.MultiIndex.from_tuples([("cloze", g) for g in GROUPS], names=["task", "split"])
    rows = pd.MultiIndex.from_tuples([("QA", m) for m in ("Vanilla", "GA", "Ours")], names=["mode", "method"])
    t = pd.DataFrame([[100, 90, 100, 100], [0, 0, 20, 30], [10, 30, 95, 96]], index=rows, columns=cols, dtype=float)
    html = render_table(t, "html")
    assert "<tr><th>GA</th><td>0.00</td><td>0.00</td>" in html
    assert "<tr><th>Ours</th><td><strong>10.00</strong></td><td><strong>30.00</strong></td>" in html
    assert RETAIN_BUDGET["cloze"] < 100 - 20


def test_wide_tables_split_into_parts_that_fit_the_page():
    """erasebook.report.column_parts: as few parts as fit, a column group never cut, every column once, in order;
    wrap_labels lets long headers wrap."""
    from erasebook.report import MAX_COLUMNS, column_parts, wrap_labels

    attacks = ["rephrase", "context", "gate_evasion", "image_pgd", "a5", "a6", "a7", "a8"]
    wide = pd.DataFrame([range(16)], columns=pd.MultiIndex.from_product([attacks, ["leak", "retain"]]))
    parts = column_parts(wide)
    assert [p.shape[1] for p in parts] == [8, 8]
    assert [c for p in parts for c in p.columns] == list(wide.columns)
    assert all(p.shape[1] <= MAX_COLUMNS for p in column_parts(wide.iloc[:, :10]))
    assert len(column_parts(wide.iloc[:, :10])) == 1
    assert [p.shape[1] for p in column_parts(pd.DataFrame([range(7)]), max_cols=3)] == [3, 3, 1]
    with pytest.raises(ValueError):
        column_parts(wide, max_cols=1)
    assert list(wrap_labels(wide).columns)[4] == ("gate evasion", "leak")
