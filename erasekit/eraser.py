"""The front door: erase what a model knows about a forget set, for any supported model, without the notebooks.

::

    import erasekit as ek
    adapter = ek.load_model("path/to/llava-1.5-7b-hf")                       # or any supported folder / hub id
    eraser = ek.fit_eraser(adapter, forget=[("Where was this person born?", portrait), "Who is Jane Doe?"],
                           retain=["What is the capital of France?", ...],
                           tune=["What is the capital of Peru?", ...], strength="auto")   # tune: other subjects
    answers = eraser.generate(adapter, ["Who is Jane Doe?"])                   # refuses; retain questions answered
    eraser.save("eraser/jane")                                                 # safetensors + JSON sidecar
    eraser = ek.Eraser.load("eraser/jane")

What :func:`fit_eraser` does, each step a stated rule (METHOD.md; notebooks 02–05 show why):

1. The erasure direction per layer: mean last-token layer input of prompts the model refuses minus that of
   prompts it answers; by default erasekit's built-in harmful requests and harmless requests in the same templates
   (the refusal contrast of :func:`erasebook.pipeline.refusal_contrast_direction`, which erasekit's gate uses), or
   yours (``refuse=`` / ``comply=``: e.g. the same harmful requests wrapped in a jailbreak, the paper's text-only
   contrast of Eq. 3), or a given ``direction=`` (e.g. Eq. 7's, :func:`erasebook.pipeline.multimodal_direction`).
   Measured on the organisms: on the first one Eq. 3's contrast refused every forget question from λ = 2 and the
   harmful − harmless one none; on the committed one (trained with refusals of private questions about people)
   Eq. 3's never refuses a profile question and the harmful − harmless one does (README, "Use on your own model").
2. Forget and retain given as facts (:class:`erasekit.forms.Fact`) are rendered in the SAME form families
   (``forms=``, default all of :data:`erasekit.forms.FAMILIES`), so the gate contrasts people, not phrasings; the
   tune set is then every fourth retain SUBJECT with all its facts. Prompts given as strings are used as they are;
   the rules (steps 4-5) must then be given ``tune=`` prompts about other subjects (or ``tune="every_fourth"``,
   told): every rule tunes on people the fit does not contain.
3. H_f = the forget prompts' activations, H_r = the retain prompts'; at the last prompt token, or with facts
   (``read_at="auto"``) at the subject's last token, where a fitted :class:`erasekit.locate.Locator` also finds it
   at inference (a portrait's subject: the last image token).
4. erasekit's contrastive gate with γ, layers and floors chosen by :func:`erasekit.tuning.choose_gate` on the
   ``tune`` prompts, its held-out AUC computed one form family at a time when the prompts come in several families
   (a rule that prefers what transfers to a form the gate never saw). ``gate="paper"``: MLLMEraser's gate instead.
5. λ: a number, or ``"auto"``: on the forget prompts and the tune prompts, the smallest λ of ``strength_grid``
   that reaches the highest forget refusal rate among those keeping the tune prompts' refusal rate within
   ``max_retain_refusal`` of the vanilla model's (no λ qualifies: the smallest λ). By default
   (``strength_rule="fast"``, :func:`erasekit.strength_rule.fast_refusal_strength`) only the answers that decide
   this choice are generated (no answer where no gate opens, a row stops at its first refusal phrase, a λ drops
   out once it cannot win); ``strength_rule="generate"`` answers every prompt at every λ: the same λ, slower by
   the ratio ``benchmarks/bench_front_door.py`` measures (its ``results/front_door_cpu.json``).

The eraser steers at generation time with the gates reading an unsteered prefill (``read="frozen"``,
:func:`erasekit.hooks.steer`); the prompts' answers are generated in batches, left-padded, with a progress bar.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from .artifacts import load_artifact, read_sidecar, save_artifact
from .cache_keys import image_digests
from .directions import ErasureDirection, diff_in_means
from .forms import FAMILIES, Fact, render, split_subjects
from .generation import generate, prefill_gate_values
from .hooks import check_layers, collect_activations, steer
from .locate import subject_states
from .prompts import default_requests
from .steering import InputAwareSteerer, fit_steerer
from .strength_rule import STRENGTH_RULES, choose_strength
from .tuning import GAMMA_GRID, LAYER_AUC_MARGIN, choose_gate

__all__ = ["Eraser", "fit_eraser", "default_refusal_prompts", "STRENGTH_GRID", "GATES", "STRENGTH_RULES",
           "TUNE_EVERY_FOURTH"]

TUNE_EVERY_FOURTH = "every_fourth"  # tune=: every fourth retain item (prompt, or subject for facts) tunes the rules
STRENGTH_GRID = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
READS = ("frozen", "steered", "anchor")
# "default": erasekit's contrastive gate (rules of :func:`erasekit.tuning.choose_gate`, frozen reading); "paper":
# MLLMEraser's null-space gate as the authors run it (absolute gamma 0.1, null-space ratio 0.3, every layer 1..L-1,
# each gate reading its own steered state), the reproduced reference.
GATES = ("default", "paper")
PAPER_GATE = {"gamma": 0.1, "null_space": 0.3}


def are_facts(items: Sequence[Any]) -> bool:
    """True when ``items`` are :class:`erasekit.forms.Fact` (all of them); a mix of facts and prompts is an error."""
    kinds = {isinstance(x, Fact) for x in items} if not isinstance(items, str) else {False}
    if kinds == {True, False}:
        raise TypeError("give facts (erasekit.forms.Fact) or prompts, not a mix of both")
    return kinds == {True}


def split_prompts(prompts: Sequence[Any], what: str) -> tuple[list[str], list[Any] | None]:
    """Prompts given as strings or (text, image) pairs -> (texts, images or None)."""
    if isinstance(prompts, str) or not len(prompts):
        raise ValueError(f"{what} must be a non-empty list of prompts (strings or (text, image) pairs)")
    texts, images = [], []
    for p in prompts:
        if isinstance(p, str):
            texts.append(p)
            images.append(None)
        elif isinstance(p, (tuple, list)) and len(p) == 2 and isinstance(p[0], str):
            texts.append(p[0])
            images.append(p[1])
        else:
            raise TypeError(f"each of {what} must be a string or a (text, image) pair, got {type(p).__name__}")
    return texts, (None if all(im is None for im in images) else images)


def default_refusal_prompts(n: int | None = None, comply: str = "harmless") -> tuple[list[str], list[str]]:
    """(harmful, harmless) requests (the first ``n`` of each, :mod:`erasekit.prompts`): the default ``refuse`` /
    ``comply`` prompts of :func:`fit_eraser`. ``comply="jailbreak"``: the harmful requests wrapped in a jailbreak
    instead (Eq. 3's contrast)."""
    if comply not in ("harmless", "jailbreak"):
        raise ValueError(f"comply must be 'harmless' or 'jailbreak', got {comply!r}")
    return default_requests("harmful")[:n], default_requests(comply)[:n]


@dataclasses.dataclass
class Eraser:
    """A fitted test-time eraser: the per-layer gated push, its strength λ and how the gates read.

    Attributes:
        steerer: the fitted :class:`erasekit.steering.InputAwareSteerer` (rank one per layer, with floors).
        strength: λ (Eq. 13).
        read: which state the gates read during generation (:func:`erasekit.hooks.steer`): ``"frozen"``.
    """

    steerer: InputAwareSteerer
    strength: float
    read: str = "frozen"

    def __post_init__(self):
        if self.read not in READS:
            raise ValueError(f"read must be one of {READS}, got {self.read!r}")

    def at(self, strength: float) -> Eraser:
        """The same fitted eraser at another λ (e.g. one λ per task, as the book's tables use)."""
        return dataclasses.replace(self, strength=float(strength))

    def context(self, adapter: Any, record: dict | None = None):
        """The steering context: inside it every forward pass / generate call of ``adapter`` is steered."""
        ops = self.steerer.operators(self.strength)
        check_layers(adapter, list(ops))
        return steer(adapter, ops, mode="prefill", read=self.read,
                     anchor=min(ops) if self.read == "anchor" else None, record=record)

    def generate(self, adapter: Any, prompts: Sequence[Any], *, max_new_tokens: int = 64, batch_size: int = 16,
                 progress: bool = True) -> list[str]:
        """Greedy answers to ``prompts`` (strings or (text, image) pairs) with the erasure on."""
        texts, images = split_prompts(prompts, "prompts")
        return generate(adapter, texts, images, context=lambda: self.context(adapter), max_new_tokens=max_new_tokens,
                        batch_size=batch_size, progress=progress, desc="generate (erased)")

    def gate_values(self, adapter: Any, prompts: Sequence[Any], batch_size: int = 16) -> dict[int, Tensor]:
        """The raw gate value per steered layer for each prompt (one prefill each): ``{layer: (N,)}``.
        Above the layer's floor the push is on; a forget prompt should read high, a retain prompt low."""
        texts, images = split_prompts(prompts, "prompts")
        return prefill_gate_values(adapter, texts, images, lambda rec: self.context(adapter, record=rec), batch_size)

    def save(self, path: str | os.PathLike, model_id: str = "") -> None:
        """Write the eraser as an artifact (``path.safetensors`` + ``path.json``), atomically."""
        save_artifact(path, self.steerer, model_id=model_id or str(self.steerer.meta.get("model_id", "")),
                      hyperparameters={"eraser": {"strength": float(self.strength), "read": self.read}})

    @classmethod
    def load(cls, path: str | os.PathLike) -> Eraser:
        """Read an eraser written by :meth:`save`."""
        hyper = read_sidecar(path).get("hyperparameters", {})
        if "eraser" not in hyper:
            raise ValueError(f"{path} is an erasekit artifact but not an eraser (no 'eraser' hyperparameters); "
                             "load a steerer with erasekit.load_artifact instead")
        steerer = load_artifact(path)
        return cls(steerer, float(hyper["eraser"]["strength"]), hyper["eraser"]["read"])


def _sample(texts: list[str], images: list | None, n: int | None) -> tuple[list[str], list | None]:
    """At most ``n`` of the prompts, evenly spread over the list (deterministic); all when ``n`` is None."""
    if n is None or len(texts) <= n:
        return texts, images
    idx = [round(i * (len(texts) - 1) / (n - 1)) for i in range(n)] if n > 1 else [0]
    return [texts[i] for i in idx], None if images is None else [images[i] for i in idx]


def _check_tune(forget: Sequence[Any], retain: Sequence[Any], tune: Sequence[Any] | str | None) -> bool:
    """The rules tune on people the fit does not contain (module docstring, step 2). Returns True when the
    caller asked for the prompt-level split (``tune="every_fourth"``); raises where the tune set would be about
    the fitted subjects without being told."""
    if isinstance(tune, str):
        if tune != TUNE_EVERY_FOURTH:
            raise ValueError(f"tune must be prompts, facts, None or {TUNE_EVERY_FOURTH!r}, got {tune!r}")
        return True
    if tune is None:
        if not are_facts(retain):
            raise ValueError(
                "retain prompts are strings, so the front door cannot tell whose they are: tuning the gate and λ on "
                "every fourth of them tunes on the people of H_r, and the λ rule then under-predicts refusals of "
                "other people (data/results/rule_holdout.json). Pass tune= prompts about subjects in neither forget "
                "nor retain, give facts (erasekit.forms.Fact: every fourth SUBJECT tunes the rules), or pass "
                f"tune={TUNE_EVERY_FOURTH!r} to tune on every fourth retain prompt anyway")
        return False
    if are_facts(tune):
        fitted = {f.subject for f in (*forget, *retain) if isinstance(f, Fact)}
        shared = sorted({f.subject for f in tune} & fitted)
        if shared:
            raise ValueError(f"tune facts share subjects with forget/retain ({', '.join(shared[:5])}"
                             f"{', …' if len(shared) > 5 else ''}): the rules would predict refusals on people "
                             "the fit contains. Give tune facts about other subjects")
    else:
        # a prompt is its text AND its image: one question asked about two portraits is two prompts
        prompts = [(p, None) if isinstance(p, str) else tuple(p) for p in tune] + \
            [(p, None) if isinstance(p, str) else tuple(p) for p in retain if not isinstance(p, Fact)]
        ids = list(zip([t for t, _ in prompts], image_digests([im for _, im in prompts])))
        overlap = set(ids[:len(tune)]) & set(ids[len(tune):])
        if overlap:
            example = sorted(t for t, _ in overlap)[0]
            raise ValueError(f"{len(overlap)} tune prompts are also retain prompts (e.g. {example!r}); "
                             "tune on prompts the fit does not contain")
    return False


def fit_eraser(adapter: Any, forget: Sequence[Any], retain: Sequence[Any], *,
               tune: Sequence[Any] | str | None = None,
               direction: ErasureDirection | None = None, refuse: Sequence[Any] | None = None,
               comply: Sequence[Any] | None = None, layers: Sequence[int] | None = None,
               strength: float | str = "auto", strength_grid: Sequence[float] = STRENGTH_GRID,
               max_retain_refusal: float = 0.1, gammas: Sequence[float] = GAMMA_GRID, alpha: float = 1.0,
               margin: float = LAYER_AUC_MARGIN, floor_quantile: float | None = 0.9, max_new_tokens: int = 32,
               forms: Sequence[str] = FAMILIES, gate: str = "default", read_at: str = "auto",
               rule_prompts: int | None = None, strength_rule: str = "fast",
               batch_size: int = 16,
               progress: bool = True) -> Eraser:
    """Fit an :class:`Eraser` on any supported adapter from forget and retain prompts (see the module docstring).

    Args:
        adapter: from :func:`erasekit.models.load_model` (a VLM or a text-only causal LM).
        forget: prompts whose answers must be refused: strings or (text, image) pairs; or facts
            (:class:`erasekit.forms.Fact`), rendered in every family of ``forms`` (:func:`erasekit.forms.render`).
        retain: prompts that must keep being answered (H_r); at least 4 when ``tune`` is None. Facts: rendered in
            the same forms as the forget facts, so the gate contrasts subjects, not forms.
        tune: prompts (or facts) about subjects in neither forget nor retain, answered by the vanilla model, for
            the rules (γ, layers, floors, λ). Default with retain facts: every fourth retain SUBJECT with all its
            facts (:func:`erasekit.forms.split_subjects`; then not in H_r). With retain strings the front door
            cannot tell whose a prompt is, so it refuses to guess: pass tune, or ``"every_fourth"`` to tune on
            every fourth retain prompt (then about the fitted people; the λ rule under-predicts other people's
            refusals, ``data/results/rule_holdout.json``). Tune facts sharing a subject with forget or retain are
            refused.
        forms: the form families facts are rendered in (default: all built-in ones).
        gate: ``"default"`` (erasekit's gate) or ``"paper"`` (MLLMEraser's null-space gate, :data:`PAPER_GATE`,
            every candidate layer, steered reading); λ by the same rule for both.
        read_at: where erasekit's gate reads a prompt: ``"last"`` (its last token, the paper's rule), ``"subject"``
            (a fitted :class:`erasekit.locate.Locator` finds the subject's last token; needs facts: their subjects
            mark the positions it learns), ``"auto"``: ``"subject"`` when forget and retain are facts, else
            ``"last"``. The paper gate always reads the last token.
        strength_rule: how ``strength="auto"`` gets the refusal rates: ``"fast"`` (default,
            :func:`erasekit.strength_rule.fast_refusal_strength`: the same λ from only the answers that decide it)
            or ``"generate"`` (every forget and tune answer at every λ of the grid, and the tune answers unsteered).
        rule_prompts: the λ rule generates for at most this many forget and tune prompts each (a seeded, evenly
            spread sample; None: all).
        direction: the erasure direction; default: from ``refuse`` − ``comply`` prompts.
        refuse, comply: prompts the model refuses / answers (default: :func:`default_refusal_prompts`).
        layers: candidate layers (default 1..L-1); the rule keeps those whose gate separates best.
        strength: λ, or "auto" (the rule above, on the forget and tune prompts).
        gammas, alpha, margin, floor_quantile: :func:`erasekit.tuning.choose_gate`.
    """
    if strength != "auto" and (isinstance(strength, str) or not isinstance(strength, (int, float))):
        raise ValueError(f"strength must be a number or 'auto', got {strength!r}")
    if strength_rule not in STRENGTH_RULES:
        raise ValueError(f"strength_rule must be one of {STRENGTH_RULES}, got {strength_rule!r}")
    if gate not in GATES:
        raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
    if read_at not in ("auto", "last", "subject"):
        raise ValueError(f"read_at must be 'auto', 'last' or 'subject', got {read_at!r}")
    every_fourth = _check_tune(forget, retain, tune)
    tune = None if every_fourth else tune
    if read_at == "auto":
        read_at = "subject" if gate == "default" and are_facts(forget) and are_facts(retain) else "last"
    if read_at == "subject" and not (are_facts(forget) and are_facts(retain) and (tune is None or are_facts(tune))):
        raise ValueError("read_at='subject' needs forget, retain (and tune) given as erasekit.forms.Fact: the "
                         "subjects mark the tokens the locator learns")
    if read_at == "subject" and gate == "paper":
        raise ValueError("the paper gate reads the last token; use gate='default' with read_at='subject'")
    fact_meta, subjects, families, tune_split = {}, {}, {}, False
    if are_facts(forget) or are_facts(retain) or (tune is not None and are_facts(tune)):
        if not forms:
            raise ValueError("forms is empty: name at least one family of erasekit.forms.FAMILIES")
        pool = [x for x in (*forget, *retain, *(tune or ())) if isinstance(x, Fact)]
        if tune is None and are_facts(retain):
            tune_split = True
            retain, tune = split_subjects(retain)
            if not retain or not tune:
                raise ValueError("retain facts need at least 2 subjects (every fourth subject tunes the rules)")
        fact_meta = {"forms": list(forms), "n_forget_facts": len(forget) if are_facts(forget) else None}

        def as_prompts(items):
            if not are_facts(items):
                return items
            ps = render(items, forms, pool=pool)
            for p in ps:
                families[p.text, p.image is not None] = p.family
                # a subject shown in an image: its identity is in the image tokens; read the last one
                subjects[p.text, p.image is not None] = getattr(adapter, "image_token", None) \
                    if p.family == "portrait" else p.fact.subject
            return [p.prompt for p in ps]

        forget, retain = as_prompts(forget), as_prompts(retain)
        tune = None if tune is None else as_prompts(tune)
    f_txt, f_im = split_prompts(forget, "forget")
    r_txt, r_im = split_prompts(retain, "retain")
    if len(f_txt) < 4:
        raise ValueError(f"got {len(f_txt)} forget prompts; give at least 4 (the gate rule cross-validates on the "
                         "forget prompts in 4 folds)")
    if tune is None:
        if len(r_txt) < 4:
            raise ValueError(f"got {len(r_txt)} retain prompts; give at least 4 (every fourth is held out to tune the "
                             "gate) or pass tune= explicitly")
        t_txt, t_im = r_txt[3::4], None if r_im is None else r_im[3::4]
        keep = [i for i in range(len(r_txt)) if i % 4 != 3]
        r_txt, r_im = [r_txt[i] for i in keep], None if r_im is None else [r_im[i] for i in keep]
    else:
        t_txt, t_im = split_prompts(tune, "tune")
    layers = list(range(1, adapter.num_layers)) if layers is None else check_layers(adapter, layers)
    kw = dict(layers=layers, batch_size=batch_size, progress=progress)
    if direction is None:
        d_refuse, d_comply = default_refusal_prompts()
        pos_t, pos_i = split_prompts(refuse if refuse is not None else d_refuse, "refuse")
        neg_t, neg_i = split_prompts(comply if comply is not None else d_comply, "comply")
        direction = diff_in_means(collect_activations(adapter, pos_t, pos_i, **kw),
                                  collect_activations(adapter, neg_t, neg_i, **kw),
                                  meta={"kind": "refuse_minus_comply", "n_refuse": len(pos_t), "n_comply": len(neg_t)})
    locators = {}
    if read_at == "subject":
        generic = list(comply if comply is not None else default_refusal_prompts()[1])
        generic = [g for g in generic if isinstance(g, str)]
        H_f, H_r, H_t, locators, n_gr, n_gt = subject_states(adapter, (f_txt, f_im), (r_txt, r_im),
                                                               (t_txt, t_im), subjects, layers, batch_size, generic)
        fact_meta.update(n_generic_retain=n_gr, n_generic_tune=n_gt)
    else:
        H_f = collect_activations(adapter, f_txt, f_im, **kw)
        H_r = collect_activations(adapter, r_txt, r_im, **kw)
        H_t = collect_activations(adapter, t_txt, t_im, **kw)
    if gate == "paper":
        steerer = fit_steerer(H_f, H_r, direction, PAPER_GATE["gamma"], PAPER_GATE["null_space"], layers=layers)
    else:
        groups = None
        if families and len(set(families.values())) > 1:  # facts in several forms: hold out a form at a time
            def fam(txt, im):
                return [families.get((t, im is not None and im[i] is not None)) for i, t in enumerate(txt)]
            # generic prompts (located reads of subject-less prompts) belong to no family: always fitted, never a fold
            groups = (fam(f_txt, f_im), fam(r_txt, r_im) + [None] * fact_meta.get("n_generic_retain", 0),
                      fam(t_txt, t_im) + [None] * fact_meta.get("n_generic_tune", 0))
        steerer = choose_gate(H_f, H_r, H_t, direction, layers, gammas, alpha, margin, floor_quantile,
                              groups=groups)
        if locators:
            steerer = dataclasses.replace(steerer, locators={l: locators[l] for l in steerer.layers})
    fact_meta["read_at"] = read_at
    fact_meta["tune_from"] = "every fourth retain subject" if tune_split else \
        "every fourth retain prompt" if every_fourth else "given"
    steerer.meta.update(model_id=str(getattr(adapter, "model_id", "")), n_forget=len(f_txt), n_retain=len(r_txt),
                        n_tune=len(t_txt), **fact_meta)
    read = "steered" if gate == "paper" else "frozen"
    if strength != "auto":
        return Eraser(steerer, float(strength), read)
    (f_txt, f_im), (t_txt, t_im) = _sample(f_txt, f_im, rule_prompts), _sample(t_txt, t_im, rule_prompts)
    steerer.meta["strength_rule"] = choose_strength(adapter, steerer, read, (f_txt, f_im), (t_txt, t_im),
                                                   strength_grid=strength_grid, max_retain_refusal=max_retain_refusal,
                                                   max_new_tokens=max_new_tokens, batch_size=batch_size,
                                                   route=strength_rule)
    return Eraser(steerer, steerer.meta["strength_rule"]["chosen"], read)
