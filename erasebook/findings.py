"""The book's findings, written from the recorded results by stated rules (chapter 11 and the landing page).

Every verdict here ("selects", "does not select", "holds", "leaks") is decided by a rule on the numbers it quotes,
so a retrain that changes the numbers changes the sentence: nothing in the findings is typed by hand. Inputs are the
files the project records by code: ``gate_selectivity.json`` (``erasekit gate-selectivity``), ``asru.json``
(``erasekit asru``), ``attacks.json`` (``erasekit attacks``), ``benchmarks/results/fit.json``
(``benchmarks/bench_fit.py``) and the paper's own Table 6 (:func:`erasebook.paper.paper_table`).

The rules:

* a gate **selects** when, on held-out profiles and text cloze, forget accuracy is at most ``SELECT_BARS["Fgt"]``,
  test (paraphrases) at most ``SELECT_BARS["Test"]``, and retain and celebrity accuracy fall by at most
  ``RETAIN_DROP`` points from the vanilla model's;
* a method **holds under attack** when it leaks at most ``LEAK_BAR`` % of forget facts under both rephrasing and
  context wrappers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from html import escape
from pathlib import Path
from typing import Any

__all__ = ["SELECT_BARS", "RETAIN_DROP", "LEAK_BAR", "load_records", "selects", "gate_finding", "vqa_finding",
           "asru_finding", "attacks_finding", "cost_finding", "findings", "findings_html", "glue_numbers",
           "describe_selectivity_cause", "push_curves"]

SELECT_BARS = {"Fgt": 20.0, "Test": 25.0}
RETAIN_DROP = 10.0
LEAK_BAR = 20.0
ASRU = "ASRU (steering + GRPO)"
GATE = "erasekit gate"
_GATE_NAMES = {"default": "erasekit's gate", "paper": "the paper's null-space gate (rule λ)",
               "paper_authors_lambda": "the paper's null-space gate (authors' λ)"}


def _display(method: str) -> str:
    """A method's name in a sentence ("erasekit gate" is "erasekit's gate" there)."""
    return "erasekit's gate" if method == GATE else method


def load_records(results: str | Path, bench: str | Path | None = None) -> dict:
    """The recorded results the findings read: ``sel`` (required), ``asru``, ``attacks``, ``cause``
    (``selectivity_cause.json``), ``rule_holdout``, ``fit`` (None where the file is absent) and ``paper`` (the
    paper's Table 6, text cloze, Vanilla and Ours)."""
    from .paper import paper_table

    root = Path(results)

    def read(folder, name):
        p = Path(folder) / name
        return json.loads(p.read_text()) if p.exists() else None

    sel = read(root, "gate_selectivity.json")
    if sel is None:
        raise FileNotFoundError(f"no gate_selectivity.json in {root}: run `erasekit gate-selectivity`")
    paper = paper_table("table6", mode="QA", method=["Vanilla", "Ours"], task="cloze").pivot_table(
        index="method", columns="split", values="value")
    return {"sel": sel, "asru": read(root, "asru.json"), "attacks": read(root, "attacks.json"),
            "cause": read(root, "selectivity_cause.json"), "rule_holdout": read(root, "rule_holdout.json"),
            "fit": read(bench, "fit.json") if bench is not None else None,
            "paper": {m: {s: float(paper.loc[m, s]) for s in paper.columns} for m in paper.index}}


def selects(cloze: Mapping[str, float], vanilla: Mapping[str, float]) -> tuple[bool, list[str]]:
    """The selection rule on one cloze record (``{split: accuracy %}``) against vanilla's: (passed, the bars
    missed, each as a short phrase with its number)."""
    missed = [f"{'forget' if s == 'Fgt' else 'test'} {cloze[s]:.1f} % (rule: ≤ {bar:.0f})"
              for s, bar in SELECT_BARS.items() if s in cloze and cloze[s] > bar]
    missed += [f"{'retain' if s == 'Ret' else 'celebrities'} {vanilla[s]:.0f} → {cloze[s]:.1f} % "
               f"(rule: within {RETAIN_DROP:.0f} points)"
               for s in ("Ret", "Cele") if s in cloze and vanilla[s] - cloze[s] > RETAIN_DROP]
    return not missed, missed


def _cloze_numbers(c: Mapping[str, float], v: Mapping[str, float]) -> str:
    return (f"forget {v['Fgt']:.0f} → {c['Fgt']:.1f} %, test {c['Test']:.1f} %, retain {v['Ret']:.0f} → "
            f"{c['Ret']:.1f} %, celebrities {v['Cele']:.0f} → {c['Cele']:.1f} %")


def gate_finding(sel: dict, key: str = "default", mode: str = "QA") -> str:
    """One bullet: the gate ``key`` of ``gate_selectivity.json`` judged by :func:`selects` on cloze in ``mode``."""
    c, v = sel[key][mode]["cloze"], sel["vanilla"][mode]["cloze"]
    ok, missed = selects(c, v)
    name = _GATE_NAMES.get(key, key)
    name = name if name.startswith("erasekit") else name[0].upper() + name[1:]
    verdict = f"{name} {'selects' if ok else 'does not select on this organism'}"
    text = f"* **{verdict}.** Text cloze, held-out profiles: {_cloze_numbers(c, v)}"
    if key == "default" and "generation" in sel[key][mode]:
        g = sel[key][mode]["generation"]
        text += f"; generation ROUGE-L forget {g['Fgt']:.2f}, retain {g['Ret']:.2f}"
    return text + ("." if ok else f". Missed: {'; '.join(missed)}.")


def vqa_finding(sel: dict) -> str:
    """The image-question bullet: no signal when the vanilla organism cannot answer them (forget cloze < 40 %),
    else erasekit's gate judged by the same rule on image cloze."""
    v = sel.get("vanilla", {}).get("VQA", {}).get("cloze")
    if not v:
        return "* **Image questions** were not scored in this record."
    if v["Fgt"] < 40:
        return (f"* **Image questions carry no signal on this organism**: with the portrait its forget cloze "
                f"accuracy is {v['Fgt']:.0f} % before any erasure.")
    c = sel["default"]["VQA"]["cloze"]
    ok, missed = selects(c, v)
    return (f"* **With the portrait, erasekit's gate {'selects' if ok else 'does not select'}.** Image cloze: "
            f"{_cloze_numbers(c, v)}" + ("." if ok else f". Missed: {'; '.join(missed)}."))


def asru_finding(asru: dict | None, pct: str = "5") -> str:
    """ASRU against vanilla and its stage 1 (``asru.json``), numbers only: contextual refusal, over-refusal,
    confident wrong answers, cloze."""
    if not asru or pct not in asru:
        return "* **ASRU** has no record yet (`erasekit asru`)."
    r = asru[pct]
    a, g, v = r[ASRU], r[asru["stage1"]], r["Vanilla"]
    return (f"* **ASRU (chapter 08)**, {pct} % forget: it refuses "
            f"{a['boundary_generation']['Fgt']['appropriate_refusal']:.0f} % of forget generation questions in "
            f"context ({a['boundary']['Fgt']['appropriate_refusal']:.0f} % with the cloze form counted) and "
            f"over-refuses {a['boundary']['Ret']['over_refusal']:.0f} % of retain and "
            f"{a['boundary']['Cele']['over_refusal']:.0f} % of celebrity questions; text cloze forget "
            f"{v['mllmu']['QA']['cloze']['Fgt']:.0f} → {a['mllmu']['QA']['cloze']['Fgt']:.0f} %, retain "
            f"{a['mllmu']['QA']['cloze']['Ret']:.0f} %; confident wrong answers on forget questions "
            f"{a['boundary']['Fgt']['hallucination']:.0f} % against {g['boundary']['Fgt']['hallucination']:.0f} % for "
            f"{_display(asru['stage1'])} at the λ rule's strength.")


def rule_finding(rule: dict | None) -> str:
    """The front door's λ rule on people it never saw (``rule_holdout.json``): per model, the tune set's refusal at
    the chosen λ (the prediction) against held-out retain people's; "predicts" only within
    :data:`erasebook.rule_holdout.PREDICTION_BAR` points; the every-fourth-prompt split beside it where recorded."""
    from .rule_holdout import PREDICTION_BAR

    models = [(k, label) for k, label in (("organism", "the organism"), ("smollm2", "SmolLM2-135M-Instruct"))
              if rule and (rule.get(k) or {}).get("subjects")]
    if not models:
        return "* **The front door's λ rule on held-out people** has no record yet (`erasekit rule-holdout`)."
    parts = []
    for k, label in models:
        r = rule[k]["subjects"]
        pred, held = r["tune"]["erased"]["rate"], r["retain"]["erased"]["rate"]
        verdict = "predicts" if abs(held - pred) <= PREDICTION_BAR else "does not predict"
        fgt = r.get("forget", {}).get("erased", {}).get("rate")
        erased = "" if fgt is None else f", refusing {fgt:.1f} % of the forget prompts"
        text = (f"on {label} (λ {r['strength']:g}{erased}) tuned on other people it {verdict} held-out people's "
                f"refusals: {pred:.1f} % of the tune set against {held:.1f} % (vanilla "
                f"{r['retain']['vanilla']['rate']:.1f} %)")
        if fgt is not None and fgt <= r["forget"]["vanilla"]["rate"]:
            text += " — but nothing is erased there, so there is nothing to predict"
        p = rule[k].get("prompts")
        if p:
            text += (f"; tuned on every fourth retain prompt (the fitted people) it chose λ {p['strength']:g}, "
                     f"predicting {p['tune']['erased']['rate']:.1f} % against {p['retain']['erased']['rate']:.1f} %")
        parts.append(text)
    return (f"* **The front door's λ rule** (bar: within {PREDICTION_BAR:.0f} points): " + "; ".join(parts) + ".")


_ATTACKS = {"rephrase": "rephrasing", "context": "context wrappers", "gate_evasion": "gate evasion",
            "image_pgd": "image PGD", "relearn_retain": "relearning on retain data",
            "relearn_forget": "relearning on other forget facts"}


def attacks_finding(attacks: dict | None, method: str = GATE) -> str:
    """``method`` under the extraction attacks (``attacks.json``): holds when it leaks at most :data:`LEAK_BAR` %
    under both rephrasing and context, with vanilla's leak beside each; ASRU's leaks follow where recorded."""
    if not attacks or method not in attacks:
        return "* **Attacks** have no record yet (`erasekit attacks`)."
    m, v = attacks[method], attacks["Vanilla"]
    holds = all(k in m and m[k]["leak"] <= LEAK_BAR for k in ("rephrase", "context"))
    parts = ", ".join(f"{_ATTACKS[k]} {m[k]['leak']:.0f} % (vanilla {v[k]['leak']:.0f} %)"
                      for k in ("rephrase", "context", "gate_evasion", "image_pgd") if k in m and k in v)
    line = (f"* **Under attack (chapter 09), {_display(method)} {'holds' if holds else 'leaks'}** (rule: at most "
            f"{LEAK_BAR:.0f} % of forget facts under rephrasing and context): {parts}.")
    a = attacks.get(ASRU)
    if a:
        line += " ASRU, whose refusals live in its weights: " + ", ".join(
            f"{_ATTACKS[k]} {a[k]['leak']:.0f} % (retain accuracy {a[k]['retain_acc']:.0f} %)"
            for k in _ATTACKS if k in a) + "."
    return line


def cost_finding(fit: dict | None) -> str:
    """The rank-one fit's cost against the authors' dense route (``benchmarks/results/fit.json``)."""
    t = (fit or {}).get("results", {}).get("target")
    if not t:
        return "* **Cost** has no record yet (`benchmarks/bench_fit.py`)."
    return (f"* **The rank-one identity W P = d gᵀ** holds on the model's own activations (chapter 04), and fitting "
            f"erasekit's gate for every layer of a 7B-sized model (d = {t['d']}) takes "
            f"{t['all_layers_total_s']['default']:.2f} s against {t['all_layers_total_s']['dense']:.0f} s for the "
            f"authors' dense route ({t['ratio_dense_over_default']:.0f}×, {fit['machine'].get('gpu', 'accelerator')}; "
            f"chapter 10 lists every recorded ratio).")


def findings(records: dict) -> list[str]:
    """The findings as Markdown bullets, in the book's order: erasekit's gate, the paper's gate and the paper's own
    numbers, image questions, ASRU, attacks, cost."""
    sel, paper = records["sel"], records["paper"]
    out = [gate_finding(sel, "default")]
    if "paper" in sel:
        line = gate_finding(sel, "paper")
        if "paper_authors_lambda" in sel:
            c, v = sel["paper_authors_lambda"]["QA"]["cloze"], sel["vanilla"]["QA"]["cloze"]
            ok, _ = selects(c, v)
            line += (f" At the authors' λ it {'selects' if ok else 'does not select either'}: "
                     f"{_cloze_numbers(c, v)}.")
        line += (f" The paper reports, on LLaVA-1.5-7B text questions, forget {paper['Vanilla']['Fgt']:.0f} → "
                 f"{paper['Ours']['Fgt']:.0f} with retain {paper['Vanilla']['Ret']:.0f} → "
                 f"{paper['Ours']['Ret']:.0f} (its Table 6).")
        out.append(line)
    out += [vqa_finding(sel), asru_finding(records.get("asru")), rule_finding(records.get("rule_holdout")),
            attacks_finding(records.get("attacks")), cost_finding(records.get("fit"))]
    return out


def findings_html(lines: list[str]) -> str:
    """The bullets as one HTML list (CommonMark), for pasting into the landing page across documents."""
    from markdown_it import MarkdownIt

    html = MarkdownIt("commonmark").render("\n".join(lines))
    return f'<div class="erasekit-findings">\n{html}</div>' if html.strip() else f"<p>{escape('(no findings)')}</p>"


def glue_numbers(records: dict) -> dict[str, Any]:
    """The single numbers chapter 11 glues (``{glue:text}`` keys), each read from a record."""
    sel, paper = records["sel"], records["paper"]
    ours = {k: sel[k]["QA"] for k in ("vanilla", "paper", "paper_authors_lambda", "default") if k in sel}
    numbers: dict[str, Any] = {f"{k}_{s}": ours[k]["cloze"][s] for k in ours for s in ("Fgt", "Test", "Ret", "Cele")}
    numbers.update({f"paper_{m}_{s}": paper[m][s] for m in ("Vanilla", "Ours") for s in ("Fgt", "Ret")},
                   forget_pct=sel["forget_pct"])
    attacks = records.get("attacks") or {}
    numbers.update({f"leak_{k}": attacks[GATE][k]["leak"] for k in _ATTACKS if k in attacks.get(GATE, {})})
    return numbers


_ORGANISMS = {"first": "the first organism", "images": "the organism retrained for image questions",
              "formats": "today's organism (retrained for the benchmark's formats)"}
_SHORT = {"first": "the first organism", "images": "the image-retrained organism", "formats": "today's organism"}


def _shape_row(r: dict, gate: str, lam: float, quantile: float | None = None) -> dict | None:
    """The ``gate_shape`` row of one organism's record for ``gate`` ("ramp" / "step") at ``lam`` and ``quantile``
    (default: the grid's lowest, the book's floor); None where the grid has no such row."""
    grid = r.get("gate_shape") or []
    q = min((x["quantile"] for x in grid), default=None) if quantile is None else quantile
    return next((x for x in grid if x["gate"] == gate and x["quantile"] == q and x["lambda"] == lam), None)


def _first_refusing(rows: list[dict], group: str = "Fgt", share: float = 50.0) -> float | None:
    """The smallest λ at which at least ``share`` % of ``group``'s questions are refused (None: no λ of the grid)."""
    return next((r["lambda"] for r in rows if r["lambda"] > 0 and r[f"refused_{group}"] >= share), None)


def describe_selectivity_cause(cause: dict, share: float = 50.0) -> str:
    """Chapter 11's account of why erasekit's gate selects less on the retrained organisms, from
    ``selectivity_cause.json`` (``scripts/selectivity_cause.py``): per organism, the λ the rule chose and the
    gate's openings on the scored questions, and whether a push along each direction, given to every question,
    makes at least ``share`` % of them refuse (and at which λ) — or only derails their answers."""
    orgs = [k for k in _ORGANISMS if k in cause]
    if not orgs:
        return "No measurement of the gate's history is recorded (`python scripts/selectivity_cause.py`)."
    parts = []
    for k in orgs:
        r = cause[k]
        last = str(r["layers"][-1])
        gate = r["gate_on_scored"][last]
        push = r["ungated_push"]
        bits = []
        for name, label in (("multimodal", "the paper's multimodal direction"),
                            ("refusal_contrast", "erasekit's refusal contrast")):
            if name not in push:
                continue
            lam = _first_refusing(push[name], share=share)
            if lam is None:
                top = max(push[name], key=lambda x: x["neither_Fgt"])
                bits.append(f"along {label} no λ up to {push[name][-1]['lambda']:g} makes {share:.0f} % refuse — it "
                            f"only derails answers ({top['neither_Fgt']:.0f} % neither refused nor right at λ "
                            f"{top['lambda']:g})")
            else:
                row = next(x for x in push[name] if x["lambda"] == lam)
                bits.append(f"along {label} λ {lam:g} makes {row['refused_Fgt']:.0f} % of forget and "
                            f"{row['refused_Ret']:.0f} % of retain questions refuse")
        layers = ", ".join(map(str, r["layers"]))
        parts.append(f"On {_ORGANISMS[k]}, the rule keeps layer{'s' if len(r['layers']) > 1 else ''} {layers} with λ "
                     f"{r['strengths'].get('cloze', float('nan')):g} for cloze; at layer {last} the gate opens on "
                     f"{100 * gate['open_fgt']:.0f} % of the scored forget and {100 * gate['open_ret']:.0f} % of the "
                     f"retain questions (AUC {gate['auc_fgt_vs_ret']:.2f}); pushed without a gate, "
                     + "; ".join(bits) + ".")
    shaped = [k for k in orgs if cause[k].get("gate_shape")]
    if shaped:
        k = shaped[-1]
        r = cause[k]
        grid = r["gate_shape"]
        lam = min({x["lambda"] for x in grid}, key=lambda v: abs(v - r["strengths"].get("cloze", v)))
        q0 = min(x["quantile"] for x in grid)
        ramp, step = (_shape_row(r, g, lam, q0) for g in ("ramp", "step"))
        van = next(x for x in r["ungated_push"]["refusal_contrast"] if x["lambda"] == 0)["answered_Ret"]
        rets = [x["answered_Ret"] for x in grid]
        parts.append(f"The gate's shape on {_SHORT[k]} (a diagnostic grid on the scored questions, used for no "
                     f"choice): read as a step — the full λ once the gate opens — instead of today's ramp, with the "
                     f"same floor (the {q0:g} quantile of the tune retain gates) and λ {lam:g}, forget cloze falls "
                     f"from {ramp['answered_Fgt']:.1f} % to {step['answered_Fgt']:.1f} % while retain goes from "
                     f"{ramp['answered_Ret']:.1f} % to {step['answered_Ret']:.1f} %. Across every floor quantile, "
                     f"shape and λ of the grid retain stays between {min(rets):.1f} and {max(rets):.1f} % (vanilla "
                     f"{van:.0f} %): its cost comes from the retain questions the gate opens on, not from λ or the "
                     "floor.")
    then = cause.get("_code_then") or {}
    scored = {k: v for k, v in then.items() if k in _ORGANISMS and isinstance(v, dict)}
    if scored:
        rec = then.get("record")
        parts.append(f"With the code of commit {then.get('commit', '?')} (the first organism's record"
                     + (f", forget cloze {rec['Fgt']:.1f} % with retain {rec['Ret']:.1f} %" if rec else "")
                     + "; its gate pushed along the paper's multimodal direction), erasekit's gate leaves "
                     + ", ".join(f"{v['Fgt']:.1f} % of forget cloze answers on {_SHORT[k]} (retain {v['Ret']:.1f} %)"
                                 for k, v in scored.items()) + ".")
        # today's code on the first organism, as the book uses the gate: the ramp at its rule's λ
        first = cause.get("first")
        now = _shape_row(first, "ramp", first["strengths"].get("cloze")) if first else None
        if now and "first" in scored and "formats" in scored:
            t1, t2, t0 = scored["first"]["Fgt"], scored["formats"]["Fgt"], now["answered_Fgt"]
            text = (f"On these questions today's code leaves {t0:.1f} % on the first organism: changing the "
                    f"code moved it by {t0 - t1:+.1f} points, retraining the organism moved the old code by "
                    f"{t2 - t1:+.1f}.")
            mm = cause.get("formats", {}).get("ungated_push", {}).get("multimodal")
            if mm and _first_refusing(mm, share=share) is None:
                text += (f" Along the multimodal direction today's organism refuses at no λ, so the old code's "
                         f"{t2:.1f} % comes from answers derailed, not refused.")
            parts.append(text)
    return "\n".join(f"* {part}" for part in parts)  # one bullet per organism, then the shape, then the code


def push_curves(cause: dict, group: str = "Fgt") -> dict[str, dict[float, float]]:
    """``{"<organism>, <direction>": {λ: % of group's questions refused}}`` for the ungated pushes of
    ``selectivity_cause.json`` (a figure's lines)."""
    names = {"multimodal": "paper's direction", "refusal_contrast": "refusal contrast"}
    short = {"first": "first", "images": "image-retrained", "formats": "today's"}
    return {f"{short[k]}, {names[d]}": {r["lambda"]: r[f"refused_{group}"] for r in rows}
            for k in short if k in cause for d, rows in cause[k]["ungated_push"].items()}
