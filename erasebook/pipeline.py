"""The method's expensive steps (MLLMEraser, METHOD.md), as cached functions keyed by their inputs.

Every step takes a :class:`erasebook.session.Session` and computes its result once; :mod:`erasebook.cache` stores
it keyed by everything that determines it, so notebooks run alone and in any order, and a second call only reads.

======================================  ====================================================================
:func:`erasebook.session.load_session`    (a) model adapter + source (the organism's world, or MLLMU-Bench rows)
:func:`refusal_direction`                (b) text-only erasure direction, Eq. 3 (harmful refused − jailbreak)
:func:`adversarial_images`               (c) PGD images on natural images, Eq. 5–6
:func:`multimodal_direction`             (d) Eq. 7: clean image + refused prompt − PGD image + jailbreak prompt
:func:`refusal_contrast_direction`       (d') erasekit's: refused harmful − answered harmless request (± image)
:func:`query_activations`                (e) last-token layer inputs of the evaluation prompts, per group
:func:`forget_retain_activations`        (e) H_f (forget) and H_r (the ``fit`` retain + celebrity profiles)
:func:`input_aware_steerer`              (f) rank-one (or MLP) input-aware steerer for given γ, null space, layers
:func:`gate_prompts`                     (f) the fitting sets as front-door prompts (forget, retain, tune)
:func:`paper_steerer`                    (f) MLLMEraser's gate through the front door (``gate="paper"``)
:func:`default_steerer`                  (f) erasekit's gate through the front door, γ / layers / floors on tune data
:class:`erasekit.strengths.TaskSteering`  (f) steerer or constant direction + per-task λ -> interventions
:func:`erasebook.runs.evaluate_steering`  (g) MLLMU-Bench protocol on Fgt/Test/Ret/Cele, vanilla or steered
======================================  ====================================================================

Example::

    import erasekit as ek
    import erasebook.pipeline as pl
    session = ek.load_session()                                     # the organism and its world
    direction = pl.multimodal_direction(session, pl.adversarial_images(session, steps=100, n_images=4))
    acts = pl.forget_retain_activations(session, forget_pct=5)
    steering = ek.TaskSteering(pl.input_aware_steerer(session, direction, acts, gamma=0.1, null_space=0.3))
    table = ek.runs.results(session, forget_pct=5, steering=steering)   # Table-1 layout, vanilla vs steered

Sign convention: the paper's (refusal − recall, positive λ), see :mod:`erasekit.directions`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from erasekit.attack import AdversarialImages, harmful_target_loss, pgd_attack
from erasekit.cache_keys import cache_key, image_digests
from erasekit.directions import ErasureDirection, diff_in_means
from erasekit.eraser import PAPER_GATE, fit_eraser
from erasekit.evaluate import TASKS, benchmark_rows, build_items
from erasekit.generation import generate
from erasekit.heldout import partition_profiles
from erasekit.hooks import check_layers, collect_activations
from erasekit.scoring import is_degenerate, is_refusal
from erasekit.steering import InputAwareSteerer, fit_mlp_steerer, fit_steerer
from erasekit.tuning import GAMMA_GRID, LAYER_AUC_MARGIN

from .cache import VERSION, cached, key_of
from .session import Session
from .world import HARMFUL_TARGETS, natural_images, safety_prompts

__all__ = [
    "safety_pairs",
    "refusal_direction",
    "refusal_contrast_direction",
    "images_to_tensor",
    "clean_images",
    "adversarial_images",
    "multimodal_direction",
    "group_rows",
    "group_items",
    "query_activations",
    "ForgetRetain",
    "forget_retain_key",
    "forget_retain_activations",
    "input_aware_steerer",
    "gate_prompts",
    "paper_steerer",
    "default_steerer",
]


# ----------------------------------------------------------------------------------------------------------------
# (b) text-only refusal direction


def safety_pairs(session: Session, heldout: bool = False, n: int | None = None) -> tuple[list[str], list[str]]:
    """Paired (harmful prompts, jailbreak-wrapped versions) from :func:`erasebook.world.safety_prompts`.

    ``heldout=False``: the training phrasings (for directions); True: held-out phrasings (for checks).
    ``n``: the first n pairs (None: all).
    """
    sp = [
        s for s in safety_prompts(session.safety_world) if s.heldout == heldout and s.kind in ("harmful", "jailbreak")
    ]
    harmful = [s.prompt for s in sp if s.kind == "harmful"]
    jail = [s.prompt for s in sp if s.kind == "jailbreak"]
    assert len(harmful) == len(jail), "safety_prompts yields each harmful prompt followed by its jailbreak"
    if n is not None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        harmful, jail = harmful[:n], jail[:n]
    return harmful, jail


def _filter_behaviour(session: Session, refuse_q, refuse_im, comply_q, comply_im, batch_size, progress):
    """Keep harmful inputs the model refuses and jailbreak inputs it complies with (non-degenerate)."""
    r = generate(session.adapter, refuse_q, refuse_im, max_new_tokens=32, batch_size=batch_size, progress=progress,
                 desc="check refusals")
    c = generate(session.adapter, comply_q, comply_im, max_new_tokens=32, batch_size=batch_size, progress=progress,
                 desc="check compliance")
    keep_r = [i for i, t in enumerate(r) if is_refusal(t)]
    keep_c = [i for i, t in enumerate(c) if not is_refusal(t) and not is_degenerate(t)]
    if len(keep_r) < 2 or len(keep_c) < 2:
        raise RuntimeError(
            f"behaviour filter left {len(keep_r)} refused harmful and {len(keep_c)} complied jailbreak inputs "
            f"(of {len(r)} / {len(c)}); the model does not separate the two groups. Pass filter=False to use all "
            f"prompts, or check the chat template (a wrong template gives empty or '!!!!' outputs).")
    return keep_r, keep_c, {"n_refused": len(keep_r), "n_complied": len(keep_c), "n_checked": len(r)}


def _cached_direction(step: str, key: str, compute, session: Session, params: dict, refresh: bool):
    """A direction step through the cache, carrying its key in ``meta["cache_key"]``."""
    out = cached(step, key, compute, session.model_id, params, refresh)
    out.meta["cache_key"] = key
    return out


def refusal_direction(session: Session, n_pairs: int | None = None, layers: Sequence[int] | None = None,
                      filter: bool = True, batch_size: int = 16, progress: bool = True,
                      refresh: bool = False) -> ErasureDirection:
    """(b) Text-only erasure direction (Eq. 3): mean h(harmful, refused) − mean h(jailbreak-wrapped, complied).

    No image; last prompt token; residual stream at the input of every decoder layer (``layers``: default all).

    Args:
        session: from :func:`erasebook.session.load_session`.
        n_pairs: use the first n (harmful, jailbreak) training pairs (None: all; the paper uses 17).
        filter: keep only harmful prompts the model actually refuses and jailbreaks it complies with.

    Returns:
        :class:`ErasureDirection` ``{layer: (d,)}`` float64, ``meta["cache_key"]`` set.
    """
    layers = check_layers(session.adapter, layers)
    harmful, jail = safety_pairs(session, heldout=False, n=n_pairs)
    key = cache_key(step="refusal_direction", version=VERSION, model=session.model_key, harmful=harmful, jailbreak=jail,
                    layers=layers, filter=filter)

    def compute():
        h, j = harmful, jail
        info = {}
        if filter:
            kr, kc, info = _filter_behaviour(session, h, None, j, None, batch_size, progress)
            h, j = [h[i] for i in kr], [j[i] for i in kc]
        pos = collect_activations(session.adapter, h, layers=layers, batch_size=batch_size, progress=progress)
        neg = collect_activations(session.adapter, j, layers=layers, batch_size=batch_size, progress=progress)
        return diff_in_means(pos, neg, meta={"model_id": session.model_id, "kind": "text_only", "site": "layer_input",
                                             "position": "last", **info})

    params = {"n_pairs": n_pairs, "layers": layers, "filter": filter}
    return _cached_direction("refusal_direction", key, compute, session, params, refresh)


# ----------------------------------------------------------------------------------------------------------------
# (c) PGD adversarial images


def images_to_tensor(images: Sequence[Any]) -> Tensor:
    """PIL images (same size) -> (B, 3, H, W) float in [0, 1]."""
    arrs = [torch.from_numpy(np.array(im.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1) for im in images]
    return torch.stack(arrs).float() / 255.0


def clean_images(session: Session, n_images: int | None = None, folder: str | None = None) -> tuple[list[str], Tensor]:
    """(names, (B, 3, H, W)) clean natural images at the model's image size (``folder``: e.g. ImageNet val JPEGs)."""
    ims = natural_images(session.image_size, folder=folder)
    names = list(ims)[: n_images if n_images is not None else None]
    if not names:
        raise ValueError("no natural images")
    return names, images_to_tensor([ims[n] for n in names])


def adversarial_images(session: Session, eps: float | None = 16 / 255, alpha: float = 1 / 255, steps: int = 500,
                       n_images: int | None = 8, k: int = 8, n_pairs: int | None = None, folder: str | None = None,
                       random_start: bool = False, seed: int = 0, progress: bool = True,
                       refresh: bool = False) -> AdversarialImages:
    """(c) PGD images (Eq. 5–6) from clean natural images, maximising the likelihood of harmful targets.

    Image i is paired with the harmful training prompts i, i + B, i + 2B, ... (B images); each step samples k
    targets from :data:`erasebook.world.HARMFUL_TARGETS` and k of those prompts, in one batched forward.

    Args:
        eps: L∞ radius (16/255) or None (unconstrained, only [0, 1]); alpha: step size; steps: PGD steps.
        n_images: how many natural images (None: all 8); folder: your own clean images instead.
        k: targets per step; n_pairs: harmful prompts used (None: all training prompts).

    Returns:
        :class:`AdversarialImages` with ``images`` (B, 3, H, W), ``loss_history`` (B, steps), and in ``meta``:
        ``clean_key``, ``names``, ``prompts`` (per image, JSON), ``cache_key``.
    """
    names, clean = clean_images(session, n_images, folder)
    harmful, _ = safety_pairs(session, heldout=False, n=n_pairs)
    b = clean.shape[0]
    prompts = [[harmful[j] for j in range(i, len(harmful), b)] or [harmful[i % len(harmful)]] for i in range(b)]
    hyper = {"eps": eps, "alpha": alpha, "steps": steps, "k": k, "random_start": random_start, "seed": seed}
    key = cache_key(step="adversarial_images", version=VERSION, model=session.model_key, clean=clean, prompts=prompts,
                    targets=list(HARMFUL_TARGETS), **hyper)

    def compute():
        results = []
        for i in tqdm(range(b), desc="PGD images", disable=not progress):
            gen = torch.Generator().manual_seed(seed + i)
            loss = harmful_target_loss(session.adapter, prompts[i], HARMFUL_TARGETS, k=k, generator=gen)
            x = clean[i].to(device=session.adapter.device, dtype=torch.float32)
            results.append(pgd_attack(loss, x, eps=eps, alpha=alpha, steps=steps, random_start=random_start,
                                      seed=seed + i, progress=progress))
        for r in results:
            r.image = r.image.cpu()
        return AdversarialImages.from_results(results, meta={"model_id": session.model_id, "names": names,
                                                             "prompts": prompts, **hyper})

    out = cached("adversarial_images", key, compute, session.model_id, hyper, refresh)
    out.meta.update(cache_key=key, clean_names=names)
    return out


# ----------------------------------------------------------------------------------------------------------------
# (d) multimodal erasure direction


def _mm_pairs(session: Session, adv: AdversarialImages, n_pairs: int | None):
    harmful, jail = safety_pairs(session, heldout=False, n=n_pairs)
    names = adv.meta.get("clean_names") or adv.meta.get("names")
    _, clean = clean_images(session, len(names))
    b = adv.images.shape[0]
    if clean.shape != adv.images.shape:
        raise ValueError(f"clean images {tuple(clean.shape)} do not match the adversarial ones "
                         f"{tuple(adv.images.shape)} (made for another model or image folder?)")
    idx = [i % b for i in range(len(harmful))]
    return harmful, jail, [clean[i] for i in idx], [adv.images[i] for i in idx]


def multimodal_direction(session: Session, adv: AdversarialImages, n_pairs: int | None = None,
                         layers: Sequence[int] | None = None, filter: bool = True, batch_size: int = 16,
                         progress: bool = True, refresh: bool = False) -> ErasureDirection:
    """(d) Multimodal erasure direction (Eq. 7).

    D+ = (clean natural image i, harmful prompt i) that the model refuses; D- = (PGD image i, jailbreak-wrapped
    prompt i) that it complies with; image i cycles over the B images of ``adv`` (the same pairing as in
    :func:`adversarial_images`). Last prompt token, layer inputs, all layers by default.
    """
    layers = check_layers(session.adapter, layers)
    harmful, jail, clean, advs = _mm_pairs(session, adv, n_pairs)
    key = cache_key(step="multimodal_direction", version=VERSION, model=session.model_key, adv=key_of(adv),
                    harmful=harmful, jailbreak=jail, layers=layers, filter=filter, clean=torch.stack(clean))

    def compute():
        h, hi, j, ji = harmful, clean, jail, advs
        info = {}
        if filter:
            kr, kc, info = _filter_behaviour(session, h, hi, j, ji, batch_size, progress)
            h, hi = [h[i] for i in kr], [hi[i] for i in kr]
            j, ji = [j[i] for i in kc], [ji[i] for i in kc]
        pos = collect_activations(session.adapter, h, hi, layers=layers, batch_size=batch_size, progress=progress)
        neg = collect_activations(session.adapter, j, ji, layers=layers, batch_size=batch_size, progress=progress)
        return diff_in_means(pos, neg, meta={"model_id": session.model_id, "kind": "multimodal", "site": "layer_input",
                                             "position": "last", "adversarial_key": key_of(adv), **info})

    params = {"n_pairs": n_pairs, "layers": layers, "filter": filter}
    return _cached_direction("multimodal_direction", key, compute, session, params, refresh)


def refusal_contrast_direction(session: Session, n_images: int = 4, layers: Sequence[int] | None = None,
                               filter: bool = True, batch_size: int = 16, progress: bool = True,
                               refresh: bool = False) -> ErasureDirection:
    """(d') erasekit's erasure direction: mean h(harmful request, refused) − mean h(harmless request, answered).

    The refusal direction of Arditi et al. (2024) rather than the paper's harmful − jailbreak contrast (Eq. 3 / 7):
    D+ and D- differ in whether the request is refused, not in a wrapper or an image perturbation. Each training
    request appears twice, without an image and with a clean natural image (``n_images``, cycled), so the direction
    serves text and image questions. Last prompt token, layer inputs, all layers by default; ``filter`` keeps the
    requests the model really refuses / answers.

    Why (measured on the organism, README "Two gates"): steering with the Eq. 3 direction never made the organism
    refuse a profile question, at any layer or strength; this contrast does.
    """
    layers = check_layers(session.adapter, layers)
    sp = [x for x in safety_prompts(session.safety_world) if not x.heldout]
    harmful = [x.prompt for x in sp if x.kind == "harmful"]
    harmless = [x.prompt for x in sp if x.kind == "harmless"]
    _, clean = clean_images(session, n_images)
    key = cache_key(step="refusal_contrast_direction", version=VERSION, model=session.model_key, harmful=harmful,
                    harmless=harmless, layers=layers, filter=filter, clean=clean)

    def compute():
        def both(ps):  # each prompt without and with an image
            return ps + ps, [None] * len(ps) + [clean[i % len(clean)] for i in range(len(ps))]

        (h, hi), (b, bi) = both(harmful), both(harmless)
        info = {}
        if filter:
            kr, kc, info = _filter_behaviour(session, h, hi, b, bi, batch_size, progress)
            h, hi, b, bi = [h[i] for i in kr], [hi[i] for i in kr], [b[i] for i in kc], [bi[i] for i in kc]
        acts = []
        for ps, ims in ((h, hi), (b, bi)):
            parts = [[i for i, im in enumerate(ims) if im is None], [i for i, im in enumerate(ims) if im is not None]]
            got = [collect_activations(session.adapter, [ps[i] for i in idx], None if k == 0 else [ims[i] for i in idx],
                                       layers=layers, batch_size=batch_size, progress=progress)
                   for k, idx in enumerate(parts) if idx]
            acts.append({l: torch.cat([g[l] for g in got]) for l in layers})
        return diff_in_means(acts[0], acts[1], meta={"model_id": session.model_id, "kind": "refusal_contrast",
                                                     "site": "layer_input", "position": "last", **info})

    out = cached("refusal_contrast_direction", key, compute, session.model_id,
                 {"n_images": n_images, "layers": layers, "filter": filter}, refresh)
    out.meta["cache_key"] = key
    return out


# ----------------------------------------------------------------------------------------------------------------
# (e) forget / retain activations


def group_rows(session: Session, forget_pct: int, groups: Sequence[str] = ("Fgt", "Test", "Ret", "Cele"),
               role: str = "eval", retain_sample: int | None = None, celeb_sample: int | None = None
               ) -> dict[str, list]:
    """``{group: rows}``: Fgt / Test from the forget split; Ret / Cele are the ``role`` profiles of
    ``session.partition``
    (``eval``: scored, ``tune``: hyperparameter rules, ``fit``: H_r), the first ``*_sample`` of them if given.

    This is the one place where profiles get their role, so scored profiles never enter a fit or a tuning set.
    """
    part = session.partition or partition_profiles(session.source)
    fixed = [g for g in groups if g in ("Fgt", "Test")]
    out = benchmark_rows(session.source, forget_pct, fixed) if fixed else {}
    role_rows = part.rows(session.source, forget_pct, role) if {"Ret", "Cele"} & set(groups) else {}
    caps = {"Ret": retain_sample, "Cele": celeb_sample}
    for g in groups:
        if g in ("Ret", "Cele"):
            out[g] = role_rows[g][:caps[g]] if caps[g] is not None else role_rows[g]
        elif g not in out:
            raise ValueError(f"unknown group {g!r}; expected Fgt, Test, Ret or Cele")
    return {g: out[g] for g in groups}


def group_items(session: Session, forget_pct: int, groups: Sequence[str], retain_sample, celeb_sample, modes, tasks,
                 role: str = "eval"):
    rows = group_rows(session, forget_pct, groups, role, retain_sample, celeb_sample)
    return {g: build_items({g: rows[g]}, modes=modes, tasks=tasks) for g in groups}


def query_activations(session: Session, forget_pct: int = 5, groups: Sequence[str] = ("Fgt", "Test", "Ret", "Cele"),
                      retain_sample: int | None = None, celeb_sample: int | None = None,
                      modes: Sequence[str] = ("VQA",), tasks: Sequence[str] = TASKS,
                      layers: Sequence[int] | None = None, role: str = "eval", batch_size: int = 16,
                      progress: bool = True, refresh: bool = False) -> dict[str, dict[int, Tensor]]:
    """(e) Last-token activations at every layer input for the evaluation prompts of each group.

    The prompts are exactly those :func:`erasekit.evaluate.evaluate` generates for (zero-shot protocol), with
    their images: by default image+text questions (``modes=("VQA",)``) of all three tasks, as the authors do.
    Groups: Fgt, Test (forget IDs), Ret and Cele: the ``role`` profiles of ``session.partition`` (``eval`` = scored,
    ``tune``, ``fit``), capped at ``retain_sample`` / ``celeb_sample``.

    Returns:
        ``{group: {layer: (N_group, d)}}`` float32 on CPU.
    """
    layers = check_layers(session.adapter, layers)
    items = group_items(session, forget_pct, groups, retain_sample, celeb_sample, modes, tasks, role)
    spec = {g: ([it.prompt for it in its], image_digests([it.image for it in its])) for g, its in items.items()}
    for g, its in items.items():
        if not its:
            raise ValueError(f"group {g} has no {'/'.join(modes)} questions for forget_pct={forget_pct}")
    key = cache_key(step="query_activations", version=VERSION, model=session.model_key, spec=spec, layers=layers)

    def compute():
        out = {}
        for g, its in items.items():
            ims = [it.image for it in its]
            acts = collect_activations(session.adapter, [it.prompt for it in its], None if all(i is None for i in ims)
                                       else ims, layers=layers, batch_size=batch_size, progress=progress)
            out.update({f"{g}.{l}": a for l, a in acts.items()})
        return out

    flat = cached("query_activations", key, compute, session.model_id,
                   {"forget_pct": forget_pct, "groups": list(groups), "retain_sample": retain_sample,
                    "celeb_sample": celeb_sample, "modes": list(modes), "layers": layers}, refresh)
    res: dict[str, dict[int, Tensor]] = {g: {} for g in groups}
    for name, t in flat.items():
        g, l = name.rsplit(".", 1)
        res[g][int(l)] = t
    return res


@dataclasses.dataclass
class ForgetRetain:
    """H_f and H_r per layer (rows), as the authors build them (METHOD.md §3).

    Attributes:
        forget: ``{layer: (N_f, d)}`` forget-split image+text questions.
        retain: ``{layer: (N_r, d)}`` retain split followed by celebrities.
        key: cache key (hash of the inputs); meta: sizes and settings.
    """

    forget: dict[int, Tensor]
    retain: dict[int, Tensor]
    key: str
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return sorted(self.forget)


def forget_retain_key(session: Session, forget_pct: int = 5, retain_sample: int | None = None,
                      celeb_sample: int | None = None, layers: Sequence[int] | None = None,
                      modes: Sequence[str] = ("VQA",)) -> str:
    """:func:`forget_retain_activations`' key (``ForgetRetain.key``), from its inputs alone: what the steps fitted on
    H_f and H_r are keyed by, without computing the activations."""
    return cache_key(
        step="forget_retain",
        version=VERSION,
        model=session.model_key,
        forget_pct=forget_pct,
        partition=session.partition.key() if session.partition else None,
        retain_sample=retain_sample,
        celeb_sample=celeb_sample,
        layers=check_layers(session.adapter, layers),
        modes=list(modes),
        data=session.data_key,
    )


def forget_retain_activations(session: Session, forget_pct: int = 5, retain_sample: int | None = None,
                              celeb_sample: int | None = None, layers: Sequence[int] | None = None,
                              modes: Sequence[str] = ("VQA",), progress: bool = True,
                              refresh: bool = False) -> ForgetRetain:
    """(e) H_f = forget_k questions; H_r = questions of the ``fit`` retain profiles + ``fit`` celebrities of
    ``session.partition`` (``*_sample``: profile caps). Scored and tuning profiles never enter H_r;
    ``meta["retain_ids"]``
    lists the profiles that did."""
    acts = query_activations(session, forget_pct, ("Fgt", "Ret", "Cele"), retain_sample, celeb_sample, modes=modes,
                             layers=layers, role="fit", progress=progress, refresh=refresh)
    fit_rows = group_rows(session, forget_pct, ("Ret", "Cele"), "fit", retain_sample, celeb_sample)
    retain = {l: torch.cat([acts["Ret"][l], acts["Cele"][l]]) for l in acts["Fgt"]}
    key = forget_retain_key(session, forget_pct, retain_sample, celeb_sample, sorted(acts["Fgt"]), modes)
    l0 = min(acts["Fgt"])
    meta = {"forget_pct": forget_pct, "n_forget": int(acts["Fgt"][l0].shape[0]),
            "n_retain": int(acts["Ret"][l0].shape[0]), "n_celebrity": int(acts["Cele"][l0].shape[0]),
            "retain_sample": retain_sample, "celeb_sample": celeb_sample, "modes": list(modes),
            "retain_ids": sorted(r["ID"] for rs in fit_rows.values() for r in rs)}
    return ForgetRetain(acts["Fgt"], retain, key, meta)


# ----------------------------------------------------------------------------------------------------------------
# (f) the steerer and its interventions


def _fit_steering_key(session: Session, direction: ErasureDirection, acts_key: str, hyper: dict) -> str:
    return cache_key(step="fit_steering", version=VERSION, model=session.model_key, direction=key_of(direction),
                     acts=acts_key, **hyper)


def input_aware_steerer(session: Session, direction: ErasureDirection, acts: ForgetRetain, gamma: float = 0.1,
                 null_space: str | float = 0.3, layers: Sequence[int] | None = None, kind: str = "rank_one",
                 gate: str = "nullspace", gamma_scale: str = "absolute", alpha: float = 1.0,
                 refresh: bool = False, **mlp_kwargs) -> InputAwareSteerer:
    """(f) Fit the input-aware map per layer (Eq. 12 in rank-one form, or the MLP ablation).

    Args:
        direction: text-only or multimodal :class:`ErasureDirection`.
        acts: :func:`forget_retain_activations`.
        gamma: ridge strength (authors: 0.1 LLaVA, 1.0 Qwen). null_space: ``"exact"`` or a ratio (0.3 LLaVA).
        layers: default 1..L-1 (the authors steer every layer but the first).
        kind: ``"rank_one"`` (:func:`erasekit.steering.fit_steerer`) or ``"mlp"`` (``mlp_kwargs`` to fit_mlp).
        gate, gamma_scale, alpha: the rank-one gate (:func:`erasekit.steering.fit_gate`); the defaults are the
            paper's (null space, absolute γ). erasekit's gate: ``gate="contrastive", gamma_scale="relative"``.
    """
    if kind not in ("rank_one", "mlp"):
        raise ValueError(f"kind must be 'rank_one' or 'mlp', got {kind!r}")
    layers = list(range(1, session.num_layers)) if layers is None else check_layers(session.adapter, layers)
    hyper = {"gamma": gamma, "null_space": null_space, "layers": layers, "kind": kind, **mlp_kwargs}
    if kind == "rank_one" and (gate, gamma_scale) != ("nullspace", "absolute"):
        hyper.update(gate=gate, gamma_scale=gamma_scale, alpha=alpha)
    key = _fit_steering_key(session, direction, acts.key, hyper)

    def compute():
        if kind == "rank_one":
            s = fit_steerer(acts.forget, acts.retain, direction, gamma, null_space, layers=layers, gate=gate,
                            gamma_scale=gamma_scale, alpha=alpha)
        else:
            s = fit_mlp_steerer(acts.forget, acts.retain, direction, null_space, layers=layers, **mlp_kwargs)
        s.meta.update(model_id=session.model_id)
        return s

    out = cached("fit_steering", key, compute, session.model_id, hyper, refresh)
    out.meta["cache_key"] = key
    return out


def gate_prompts(session: Session, forget_pct: int = 5, modes: Sequence[str] = ("VQA", "QA"),
                 retain_sample: int | None = None, celeb_sample: int | None = None) -> dict[str, Any]:
    """The book's fitting sets as front-door prompts (``(question, portrait or None)`` pairs, in the order of
    :func:`forget_retain_activations`): ``forget`` = the forget split's questions (H_f), ``retain`` = the ``fit``
    retain then celebrity profiles' (H_r), ``tune`` = the ``tune`` retain profiles' (the rules' negatives), all in
    ``modes`` and every task; ``retain_ids``: the profiles in H_r. Give them to :func:`erasekit.fit_eraser` and it
    fits the steerers chapter 05 scores (:func:`default_steerer`, :func:`paper_steerer`)."""
    items = group_items(session, forget_pct, ("Fgt", "Ret", "Cele"), retain_sample, celeb_sample, modes, TASKS,
                        "fit")
    tune = group_items(session, forget_pct, ("Ret",), None, None, modes, TASKS, "tune")["Ret"]
    fit_rows = group_rows(session, forget_pct, ("Ret", "Cele"), "fit", retain_sample, celeb_sample)

    def pairs(its):
        return [(it.prompt, it.image) for it in its]

    return {"forget": pairs(items["Fgt"]), "retain": pairs(items["Ret"]) + pairs(items["Cele"]),
            "tune": pairs(tune), "retain_ids": sorted(r["ID"] for rs in fit_rows.values() for r in rs)}


def paper_steerer(session: Session, direction: ErasureDirection, forget_pct: int = 5, *,
                  fit_modes: Sequence[str] = ("VQA", "QA"), progress: bool = True,
                  refresh: bool = False) -> InputAwareSteerer:
    """(f) MLLMEraser's steerer as the authors run it: the front door's ``gate="paper"`` (null-space gate, γ 0.1,
    ratio 0.3, layers 1..L-1; :data:`erasekit.eraser.PAPER_GATE`) on :func:`gate_prompts`. The same steerer as
    ``input_aware_steerer(session, direction, forget_retain_activations(...), gamma=0.1, null_space=0.3)``, under
    that step's cache key (``tests/test_pipeline.py::test_the_books_steerers_are_the_front_doors`` checks the two
    routes agree)."""
    layers = list(range(1, session.num_layers))
    hyper = {"gamma": PAPER_GATE["gamma"], "null_space": PAPER_GATE["null_space"], "layers": layers,
             "kind": "rank_one"}
    key = _fit_steering_key(session, direction, forget_retain_key(session, forget_pct, modes=fit_modes), hyper)

    def compute():
        p = gate_prompts(session, forget_pct, fit_modes)
        st = fit_eraser(session.adapter, p["forget"], p["retain"], tune=p["tune"], direction=direction,
                        gate="paper", layers=layers, strength=1.0, progress=progress).steerer
        st.meta.update(model_id=session.model_id)
        return st

    out = cached("fit_steering", key, compute, session.model_id, hyper, refresh)
    out.meta["cache_key"] = key
    return out


def default_steerer(session: Session, direction: ErasureDirection, forget_pct: int = 5, *,
                         fit_modes: Sequence[str] = ("VQA", "QA"), retain_sample: int | None = None,
                         celeb_sample: int | None = None, alpha: float = 1.0,
                         gammas: Sequence[float] = GAMMA_GRID, margin: float = LAYER_AUC_MARGIN,
                         floor_quantile: float | None = 0.9, layers: Sequence[int] | None = None,
                         progress: bool = True, refresh: bool = False) -> InputAwareSteerer:
    """(f) erasekit's default steerer: the front door (:func:`erasekit.fit_eraser`, ``read_at="last"``, λ left to
    the caller) on :func:`gate_prompts`: the contrastive gate with γ, layers and floors chosen by
    :func:`erasekit.tuning.choose_gate` on the forget set and the ``tune`` retain profiles only.

    H_f = the forget split's questions, H_r = the ``fit`` profiles (:func:`forget_retain_activations`), the tuning
    negatives = questions of the ``tune`` retain profiles, all in ``fit_modes``. Candidate layers: 1..L-1.
    Use it with ``TaskSteering(steerer, read="frozen")`` (gates read from an unsteered pass).
    """
    layers = list(range(1, session.num_layers)) if layers is None else check_layers(session.adapter, layers)
    hyper = {"alpha": alpha, "gammas": [float(g) for g in gammas], "margin": margin,
             "floor_quantile": floor_quantile, "layers": layers}
    key = cache_key(step="fit_default_steering", version=VERSION, model=session.model_key, direction=key_of(direction),
                    acts=forget_retain_key(session, forget_pct, retain_sample, celeb_sample, modes=fit_modes),
                    modes=list(fit_modes),
                    tune=[r["ID"] for r in group_rows(session, forget_pct, ("Ret",), "tune")["Ret"]], **hyper)

    def compute():
        p = gate_prompts(session, forget_pct, fit_modes, retain_sample, celeb_sample)
        st = fit_eraser(session.adapter, p["forget"], p["retain"], tune=p["tune"], direction=direction,
                        layers=layers, strength=1.0, gammas=gammas, alpha=alpha, margin=margin,
                        floor_quantile=floor_quantile, read_at="last", progress=progress).steerer
        st.meta.update(model_id=session.model_id, retain_ids=p["retain_ids"])
        return st

    out = cached("fit_default_steering", key, compute, session.model_id, hyper, refresh)
    out.meta["cache_key"] = key
    return out
