"""The paper's ablation tables as data and the sentence that reads them beside ours (erasebook.ablations)."""

from __future__ import annotations

import pandas as pd
import pytest

from erasebook import ablations


def test_paper_ablations_are_the_printed_numbers():
    paper = ablations.paper_ablations("cloze")
    t2 = paper.xs(ablations.PAPER_ABLATIONS["table2"], level="table")
    # Table 2 (Qwen-2.5-VL-7B, 5 %, VQA cloze) prints Ret 10.74 for input-unaware steering; its drop is against the
    # table's own Vanilla row (= the Ours row's Ret plus its drop)
    vanilla_ret = t2.loc["Ours", "Ret"] + t2.loc["Ours", "Ret drop"]
    assert t2.loc["Input-unaware steering", "Ret"] == 10.74
    assert t2.loc["Input-unaware steering", "Ret drop"] == pytest.approx(vanilla_ret - 10.74, abs=0.02)
    assert set(paper.index.get_level_values("table")) == set(ablations.PAPER_ABLATIONS.values())
    assert "Vanilla" not in paper.index.get_level_values(1)


def test_describe_paper_beside_ours():
    paper = ablations.paper_ablations("cloze")
    cols = pd.MultiIndex.from_product([["cloze"], ["Fgt", "Test", "Ret", "Cele"]], names=["task", "split"])
    ours = pd.DataFrame([[100, 100, 100, 100], [10, 20, 95, 90], [5, 5, 40, 30]], columns=cols,
                        index=["Vanilla", "erasekit gate", "input-unaware (λ d)"])
    text = ablations.describe_paper_beside_ours(paper, ours, {("table2", "Input-unaware steering"):
                                                              "input-unaware (λ d)"}, "erasekit gate")
    assert "organism (input-unaware (λ d)): Fgt −95 / Ret −60" in text and "erasekit gate −90 / −5" in text
    assert "paper: Fgt −28 / Ret −30" in text
