"""The MLLMEraser paper's reported numbers, kept as data so they can be shown beside ours.

``data/paper/mllmeraser_tables.json`` holds every MLLMU-Bench results table of *MLLMEraser: Achieving Test-Time
Unlearning in Multimodal Large Language Models through Activation Steering* (anonymous, under double-blind review;
the text gives no arXiv id), transcribed exactly from its full text: Table 1 (5% forget, LLaVA-1.5-7B and
Qwen-2.5-VL-7B, VQA), Table 2 (ablation, Qwen, 5%), Table 3 (PGD epsilon, LLaVA, 10%), Tables 5-7 (QA and VQA, 10% /
5%),
Table 8 (15%), Table 9 (steered layers) and Table 10 (MLP f(h)). The file stores one tidy row per cell (method, model,
mode, task, split, value). Each table also carries its caption, source line, units and notes on what the text leaves
ambiguous. Units are those of :func:`erasekit.tables.results_table`: classification and cloze accuracy in %,
generation ROUGE-L in [0, 1].
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import pandas as pd

from erasekit.evaluate import GROUPS, MODES, TASKS

from .paths import data_dir

__all__ = ["load_paper_tables", "paper_table", "paper_results_table", "PAPER_FILE"]

PAPER_FILE = "paper/mllmeraser_tables.json"
ROW_KEYS = ("method", "model", "mode", "task", "split", "value")


def _default_path() -> Path:
    return data_dir() / PAPER_FILE


@lru_cache(maxsize=4)
def _load(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_paper_tables(path: str | Path | None = None) -> dict:
    """The whole file: ``source``, ``schema``, ``notes``, ``tables`` (name -> table) and ``other_tables``.

    Each table has ``caption``, ``paper_label``, ``models``, ``forget_pct``, ``modes``, ``methods``, ``units``,
    ``notes`` and ``rows`` (dicts with :data:`ROW_KEYS`; ``value`` is None where the printed cell is unreadable).
    The result is shared by all callers, so do not modify it.
    """
    return _load(str(Path(path if path is not None else _default_path()).resolve()))


def _table(name: str, path: str | Path | None) -> dict:
    tables = load_paper_tables(path)["tables"]
    if name not in tables:
        raise KeyError(f"no paper table {name!r}; have {sorted(tables)}")
    return tables[name]


def paper_table(name: str, path: str | Path | None = None, **filters) -> pd.DataFrame:
    """Tidy rows of one table (``"table1"``, ...). Columns: :data:`ROW_KEYS`, ``forget_pct``, ``table``.

    ``filters`` keep rows whose column equals the value, or is in it when the value is a list, tuple or set.
    Example: ``paper_table("table6", method="Ours", mode="QA")``.
    """
    t = _table(name, path)
    df = pd.DataFrame([{k: r[k] for k in ROW_KEYS} for r in t["rows"]], columns=list(ROW_KEYS))
    df["value"] = df["value"].astype(float)  # None -> NaN
    df["forget_pct"] = t["forget_pct"]
    df["table"] = name
    for col, want in filters.items():
        if col not in df.columns:
            raise KeyError(f"cannot filter on {col!r}; columns are {list(df.columns)}")
        df = df[df[col].isin(want) if isinstance(want, (list, tuple, set)) else df[col] == want]
    return df.reset_index(drop=True)


def paper_results_table(name: str, model: str | None = None, path: str | Path | None = None) -> pd.DataFrame:
    """One table in the layout of :func:`erasekit.tables.results_table`: rows (mode, method), columns (task, split).

    ``model`` selects the backbone. It defaults to the table's first model (LLaVA-1.5-7B for table1, whose second
    block is Qwen-2.5-VL-7B). The rows run VQA then QA, with methods in the paper's order. The result can be
    passed to :func:`erasekit.tables.render_table`. ``attrs`` records table, model, forget_pct and caption.
    """
    t = _table(name, path)
    model = model if model is not None else t["models"][0]
    if model not in t["models"]:
        raise KeyError(f"{name} has models {t['models']}, not {model!r}")
    df = paper_table(name, path=path, model=model)
    wide = df.pivot_table(index=["mode", "method"], columns=["task", "split"], values="value", aggfunc="first",
                          dropna=False)
    rows = pd.MultiIndex.from_tuples([(m, x) for m in MODES for x in t["methods"]], names=["mode", "method"])
    cols = pd.MultiIndex.from_tuples([(k, g) for k in TASKS for g in GROUPS], names=["task", "split"])
    wide = wide.reindex(index=rows, columns=cols).dropna(how="all")
    wide.attrs.update(table=name, model=model, forget_pct=t["forget_pct"], caption=t["caption"])
    return wide
