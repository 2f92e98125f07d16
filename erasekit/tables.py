"""The results as tables: the paper's Table-1 layout, response-category shares, and their rendering (Markdown,
HTML, pandas Styler) with the best method per column in bold.

Input: the frames of :func:`erasekit.evaluate.evaluate` (one row per scored question), concatenated over methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

import pandas as pd

from .evaluate import GROUPS, MODES
from .scoring import CATEGORIES

__all__ = ["TASK_GROUPS", "TABLE_TASKS", "RETAIN_BUDGET", "results_table", "category_table", "render_table"]

# Direction of "better" per group (paper's arrows): forgetting wants low Fgt/Test, utility high Ret/Cele.
_LOWER_IS_BETTER = {"Fgt": True, "Test": True, "Ret": False, "Cele": False}


def _methods(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    if "method" not in df or df["method"].isna().all():
        df["method"] = "model"
    df["method"] = df["method"].fillna("model")
    return df


# The table's columns: the benchmark's three tasks plus ``recall``, the key-value recall of the generation task.
TABLE_TASKS = ("classification", "generation", "recall", "cloze")


def results_table(df: pd.DataFrame, recall: bool = True) -> pd.DataFrame:
    """Paper's Table 1 layout: rows (mode, method), columns (task, group).

    Values: classification and cloze accuracy in %, generation mean ROUGE-L F in [0, 1]; NaN where nothing was
    scored. Methods keep their order of first appearance; modes are VQA then QA.

    ``recall`` adds the columns ``("recall", group)``: the share (%) of generation answers that state the asked
    attribute's value (the ``correct`` flag of :func:`erasekit.evaluate.evaluate`; where a question has no known
    value, ROUGE-L F ≥ 0.5). ROUGE-L rewards an answer's template ("This person works as …") as much as its fact;
    recall counts the fact only. MLLMU-Bench reports ROUGE-L, so both are shown.
    """
    df = _methods(df)
    df = df.assign(value=df["score"] * df["task"].map({"classification": 100.0, "cloze": 100.0, "generation": 1.0}))
    if recall and "correct" in df:
        gen = df[df["task"] == "generation"]
        df = pd.concat([df, gen.assign(task="recall", value=gen["correct"].astype(float) * 100.0)], ignore_index=True)
    t = df.pivot_table(index=["mode", "method"], columns=["task", "split"], values="value", aggfunc="mean")
    methods = list(dict.fromkeys(df["method"]))
    rows = pd.MultiIndex.from_tuples([(m, x) for m in MODES for x in methods], names=["mode", "method"])
    cols = pd.MultiIndex.from_tuples([(t_, g) for t_ in TABLE_TASKS for g in GROUPS], names=["task", "split"])
    t = t.reindex(index=rows, columns=cols)
    return t.dropna(how="all").dropna(axis=1, how="all")


def category_table(df: pd.DataFrame) -> pd.DataFrame:
    """Share (%) of each response category per (method, mode, split, task)."""
    df = _methods(df)
    t = pd.crosstab([df["method"], df["mode"], df["split"], df["task"]], df["category"], normalize="index") * 100
    return t.reindex(columns=list(CATEGORIES), fill_value=0.0)


_TASK_LABEL = {"classification": "Classification Accuracy (%)", "generation": "Generation: Rouge Score",
               "recall": "Generation: key-value recall (%)", "cloze": "Cloze: Accuracy (%)"}
# One-line column labels for the markdown form (a valid Markdown table has exactly one header row).
_TASK_SHORT = {"classification": "Cls", "generation": "Gen", "recall": "Recall", "cloze": "Cloze"}
_RENDER_FORMATS = ("markdown", "html", "styler")


def _fmt(task: str, v: float) -> str:
    if pd.isna(v):
        return "–"
    return f"{v:.3f}" if task == "generation" else f"{v:.2f}"


# How far below the best retain score of its block (mode, task) a method may fall and still be bolded as the best
# at forgetting (Fgt / Test): accuracy points, and ROUGE-L in [0, 1]. A method that forgets by breaking retain
# answers is not the best at forgetting.
RETAIN_BUDGET = {"classification": 10.0, "cloze": 10.0, "recall": 10.0, "generation": 0.1}


def _best(table: pd.DataFrame, retain_budget: dict | None = RETAIN_BUDGET) -> pd.DataFrame:
    """Boolean frame: the best method per (mode, column), by the paper's arrows. For the forgetting columns
    (Fgt, Test) only methods within ``retain_budget[task]`` of the block's best Ret score on the same task compete
    (a task without a Ret column, or ``retain_budget=None``: every method)."""
    best = pd.DataFrame(False, index=table.index, columns=table.columns)
    for mode in table.index.get_level_values("mode").unique():
        block = table.loc[mode]
        if len(block) < 2:
            continue
        for col in table.columns:
            s = block[col].dropna()
            task, group = col
            if _LOWER_IS_BETTER[group] and retain_budget is not None and (task, "Ret") in block.columns:
                ret = block[(task, "Ret")]
                keep = ret >= ret.max() - retain_budget.get(task, float("inf"))
                s = s[s.index.isin(keep.index[keep])]
            if s.nunique() < 2:  # nothing to single out when every method ties
                continue
            target = s.min() if _LOWER_IS_BETTER[group] else s.max()
            for m in s.index[s == target]:
                best.loc[(mode, m), col] = True
    return best


def _arrow(group: str) -> str:
    return "↓" if _LOWER_IS_BETTER[group] else "↑"


def _html_table(table: pd.DataFrame, best: pd.DataFrame) -> str:
    """A plain HTML table: two header rows (task spanning its groups, then group with its arrow), one row per mode
    as a section label, rounded values, the best cells in <strong>."""
    tasks = list(dict.fromkeys(t for t, _ in table.columns))
    head1 = ['<th rowspan="2">Models</th>'] + [
        f'<th colspan="{sum(1 for t_, _ in table.columns if t_ == t)}">{escape(_TASK_LABEL[t])}</th>' for t in tasks]
    head2 = [f"<th>{escape(g)} {_arrow(g)}</th>" for _, g in table.columns]
    rows = []
    for mode in table.index.get_level_values("mode").unique():
        rows.append(f'<tr class="mode"><th colspan="{len(table.columns) + 1}">{escape(str(mode))}</th></tr>')
        for method in table.loc[mode].index:
            cells = []
            for col in table.columns:
                s = escape(_fmt(col[0], table.loc[(mode, method), col]))
                cells.append(f"<td><strong>{s}</strong></td>" if best.loc[(mode, method), col] else f"<td>{s}</td>")
            rows.append(f"<tr><th>{escape(str(method))}</th>{''.join(cells)}</tr>")
    return ('<table class="dataframe erasekit-results">\n<thead>\n<tr>' + "".join(head1) + "</tr>\n<tr>"
            + "".join(head2) + "</tr>\n</thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>")


TASK_GROUPS = {"accuracy": ("classification", "cloze"), "generation": ("generation", "recall")}


def render_table(table: pd.DataFrame, fmt: str = "markdown", tasks: Sequence[str] | None = None) -> Any:
    """Render :func:`results_table` output as a real table, values rounded (accuracy to 2 decimals, ROUGE-L to 3).

    ``fmt``: ``"markdown"`` -> str, a valid Markdown (GFM / MyST) table with ONE header row (``Cls Fgt ↓``,
    ``Gen Ret ↑``, ``Cloze Cele ↑``; Cls = classification accuracy %, Gen = generation ROUGE-L, Recall = the
    generation's key-value recall %, Cloze = cloze accuracy %) and a bold row per mode; ``"html"`` -> str, an HTML
    ``<table>`` with the paper's two header rows;
    ``"styler"`` -> a pandas Styler (an HTML table in a notebook, ``display(render_table(t, "styler"))``).

    Best method per column and mode in bold (lowest for Fgt/Test, highest for Ret/Cele), as in the paper; ties
    share the bold, and a column where all methods tie has none. Unlike the paper, a method competes for Fgt/Test
    only if it keeps retain: its Ret score on the task within :data:`RETAIN_BUDGET` of the best method's.

    ``tasks``: only these tasks' columns (e.g. :data:`TASK_GROUPS` ``["accuracy"]``: classification and cloze, 8
    columns; the full table has 16, too wide for a page column).
    """
    if fmt not in _RENDER_FORMATS:
        raise ValueError(f"fmt must be one of {_RENDER_FORMATS}, got {fmt!r}")
    full = table
    if tasks is not None:
        unknown = set(tasks) - set(table.columns.get_level_values(0))
        if unknown:
            raise ValueError(f"tasks {sorted(unknown)} are not in the table (it has "
                             f"{sorted(set(table.columns.get_level_values(0)))})")
        table = table.loc[:, [c for c in table.columns if c[0] in tasks]]
    best = _best(full).loc[:, table.columns]
    if fmt == "styler":
        styler = table.style.format({c: (lambda v, t=c[0]: _fmt(t, v)) for c in table.columns})
        styler = styler.format_index(lambda g: f"{g} {_arrow(g)}" if g in _LOWER_IS_BETTER else g, axis=1, level=1)
        styler = styler.format_index(lambda t: _TASK_LABEL.get(t, t), axis=1, level=0)
        # class "dataframe": the book theme's table style (borders, zebra rows), as for a DataFrame's own HTML
        styler = styler.set_table_attributes('class="dataframe erasekit-results"').set_table_styles(
            [{"selector": "td", "props": "text-align: right; padding: 0.15em 0.35em;"},
             {"selector": "th", "props": "padding: 0.15em 0.35em;"}])
        # the labels say what they are: no "mode / method" and "task / split" name cells
        styler = styler.hide(names=True, axis=0).hide(names=True, axis=1)
        return styler.apply(lambda _: best.map(lambda b: "font-weight: bold" if b else ""), axis=None)
    if fmt == "html":
        return _html_table(table, best)
    head = ["Models"] + [f"{_TASK_SHORT[t]} {g} {_arrow(g)}" for t, g in table.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([":---"] + ["---:"] * len(table.columns)) + "|"]
    for mode in table.index.get_level_values("mode").unique():
        lines.append("| **" + str(mode) + "** |" + " |" * len(table.columns))
        for method in table.loc[mode].index:
            cells = []
            for col in table.columns:
                s = _fmt(col[0], table.loc[(mode, method), col])
                cells.append(f"**{s}**" if best.loc[(mode, method), col] else s)
            lines.append("| " + " | ".join([str(method)] + cells) + " |")
    return "\n".join(lines)
