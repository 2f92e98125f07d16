"""The shared expensive steps of the notebooks, as cached functions keyed by their inputs.

Every notebook starts from :func:`load_default` and calls the steps it needs; a step computes its result once and
stores it with :mod:`erasekit.artifacts` under :func:`erasekit.paths.cache_dir` (a "tensors", "direction",
"adversarial_images" or "steerer" artifact), keyed by :func:`erasekit.artifacts.cache_key` of everything that
determines it: the model (id + hash of its config and weights), the data actually fed to the model (prompts and
image pixels), the hyperparameters and the keys of upstream results. So notebooks run alone and in any order, and
a second call, in the same process or another, only reads the artifact. Evaluation results (DataFrames) are
stored next to them as parquet files with the same key scheme.

Steps (MLLMEraser, METHOD.md):

======================================  ====================================================================
:func:`load_default`                     (a) model adapter + source (the organism's world, or MLLMU-Bench rows)
:func:`refusal_direction`                (b) text-only erasure direction, Eq. 3 (harmful refused − jailbreak)
:func:`adversarial_images`               (c) PGD images on natural images, Eq. 5–6
:func:`multimodal_direction`             (d) Eq. 7: clean image + refused prompt − PGD image + jailbreak prompt
:func:`query_activations`                (e) last-token layer inputs of the evaluation prompts, per group
:func:`forget_retain_activations`        (e) H_f (forget) and H_r (retain + celebrities), authors' recipe
:func:`fit_steering`                     (f) rank-one (or MLP) input-aware steerer (γ, null space, layers)
:class:`Steering`                        (f) steerer or constant direction + per-task λ -> interventions
:func:`evaluate_steering`                (g) MLLMU-Bench protocol on Fgt/Test/Ret/Cele, vanilla or steered
======================================  ====================================================================

Example::

    import erasekit.pipeline as pl
    d = pl.load_default()                                     # the organism and its world
    direction = pl.multimodal_direction(d, pl.adversarial_images(d, steps=100, n_images=4))
    acts = pl.forget_retain_activations(d, forget_pct=5, retain_sample=60)
    steering = pl.Steering(pl.fit_steering(d, direction, acts, gamma=0.1, null_space=0.3))
    table = pl.results(d, forget_pct=5, steering=steering)   # Table-1 layout, vanilla vs steered

Sign convention: the paper's (refusal − recall, positive λ), see :mod:`erasekit.directions`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from . import paths
from .artifacts import artifact_exists, cache_key, load_artifact, save_artifact
from .attack import AdversarialImages, harmful_target_loss, pgd_attack
from .directions import ErasureDirection, diff_in_means
from .evaluate import TASKS, benchmark_rows, build_items, evaluate, evaluate_safety, is_degenerate, is_refusal
from .heldout import ProfilePartition, partition_profiles
from .hooks import check_layers, collect_activations, steer
from .tuning import GAMMA_GRID, LAYER_AUC_MARGIN, auc, choose_gate
from .steering import InputAwareSteerer, constant_operators, fit_mlp_steerer, fit_steerer

__all__ = [
    "VERSION", "PAPER_STRENGTHS", "STATS", "Default", "load_default", "model_key", "safety_pairs",
    "refusal_direction", "adversarial_images", "clean_images", "multimodal_direction", "query_activations",
    "ForgetRetain", "forget_retain_activations", "fit_steering", "fit_default_steering", "group_rows", "Steering",
    "gate_reads", "evaluate_steering", "results",
    "safety_rates", "attack_success", "refusal_check", "dense_eq12", "images_to_tensor", "profile_questions",
    "generate", "projector_summary", "auc", "example_generations", "tuning_rows", "choose_strengths",
    "BaselineRun", "baseline_data", "run_baseline", "steering_norms", "separability", "steered_activations",
]

# Bump when a step's computation changes: every cached result made by an older version is then recomputed.
VERSION = 1
# λ per task from the authors' LLaVA-1.5 script (classification / generation / cloze); METHOD.md §3.
PAPER_STRENGTHS = {"classification": 0.25, "generation": 0.35, "cloze": 0.25}
# Cache statistics per step: STATS["refusal_direction:hit"] etc. (tests and notebooks read them).
STATS: collections.Counter = collections.Counter()
_MEMO: dict[str, Any] = {}


# ----------------------------------------------------------------------------------------------------------------
# the default: model + data


@dataclasses.dataclass
class Default:
    """What every notebook starts from.

    Attributes:
        adapter: the :class:`erasekit.models.ModelAdapter`.
        source: anything with ``split(name)``: the organism's :class:`erasekit.world.World` or an
            :class:`erasekit.data.MLLMUBench`.
        world: the synthetic world when the source is one (portraits, profiles), else None.
        safety_world: world whose names fill the privacy prompts of :func:`erasekit.world.safety_prompts`
            (the source world, or a small synthetic one next to a real benchmark).
        model_key: hash of the model id, config and weights (part of every cache key).
        data_key: hash of the data source.
        partition: which retain / celebrity profiles are scored (``eval``), protect the hyperparameter rules
            (``tune``) and form H_r and the baselines' retain data (``fit``); disjoint (:mod:`erasekit.heldout`).
    """

    adapter: Any
    source: Any
    world: Any
    safety_world: Any
    model_key: str
    data_key: str
    partition: ProfilePartition | None = None

    @property
    def model_id(self) -> str:
        return str(self.adapter.model_id)

    @property
    def num_layers(self) -> int:
        return int(self.adapter.num_layers)

    @property
    def image_size(self) -> int:
        size = self.adapter.image_size
        if size is None:
            raise ValueError(f"{self.model_id} takes no images (text-only adapter); the multimodal steps need a VLM")
        return int(size[0])

    def __repr__(self) -> str:
        src = type(self.source).__name__
        return f"Default(model={self.model_id!r}, layers={self.num_layers}, d={self.adapter.hidden_size}, source={src})"


def _file_digest(path: Path, full_limit: int = 512 << 20) -> str:
    """sha256 of a file; above ``full_limit`` bytes only its size and first/last MiB (7B weights: seconds, not minutes)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        if size <= full_limit:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(f.read(1 << 20))
            f.seek(size - (1 << 20))
            h.update(f.read(1 << 20))
    return h.hexdigest()


def model_key(model: Any) -> str:
    """Cache-key part for a model: a local folder (config + weights + tokenizer files), a hub id, or an adapter.

    An adapter passed directly is hashed by its model id and, when it is small (< 100 M parameters), its weights.
    """
    if hasattr(model, "model") and hasattr(model, "layers"):  # an adapter
        params = list(model.model.state_dict().items())
        n = sum(t.numel() for _, t in params)
        weights = {k: t for k, t in params} if n < 100_000_000 else n
        return cache_key(model_id=str(model.model_id), weights=weights)
    p = Path(os.fspath(model))
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and (
            f.suffix in (".json", ".safetensors", ".bin", ".model", ".jinja", ".txt")))
        if not files:
            raise FileNotFoundError(f"{p} holds no model files (config.json, *.safetensors, ...)")
        return cache_key(files={f.name: _file_digest(f) for f in files})
    return cache_key(hub_id=str(model))


def _data_key(source: Any) -> str:
    from .world import World

    if isinstance(source, World):
        return cache_key(world=source)
    root = getattr(source, "root", None)
    if root is not None:
        files = sorted(Path(root).rglob("*.parquet"))
        return cache_key(files={str(f.relative_to(root)): _file_digest(f, full_limit=64 << 20) for f in files})
    return cache_key(source=repr(source))


def load_default(model: Any = None, data: Any = None, *, device: Any = None, dtype: Any = None,
                 safety_world: Any = None) -> Default:
    """(a) The model and its data: the embedded organism and its world by default.

    Args:
        model: a local folder or hub id (LLaVA-1.5, Qwen2.5-VL, Qwen3-VL in HF format), an already built adapter,
            or None for :func:`erasekit.paths.organism_dir`.
        data: None (the organism's own world: ``model`` must be an erasekit organism folder), a folder with the
            MLLMU-Bench parquet files (:class:`erasekit.data.MLLMUBench`), or a World / anything with ``split``.
        device, dtype: passed to :func:`erasekit.models.load_model` (default: GPU + bf16 when there is one).
        safety_world: world used for the safety prompts' names (default: the source world, or a small synthetic
            one when the source is a real benchmark).

    Loaded models are memoised per process: calling it again in a notebook is instant.
    """
    from .data import MLLMUBench
    from .models import load_model
    from .organism import load_world_for
    from .world import make_world

    model = paths.organism_dir() if model is None else model
    is_adapter = hasattr(model, "model") and hasattr(model, "layers")
    memo = ("default", id(model) if is_adapter else os.fspath(model),
            id(data) if data is not None and not isinstance(data, (str, os.PathLike)) else data, str(device), str(dtype))
    if memo in _MEMO:
        return _MEMO[memo]
    if not is_adapter:
        p = Path(os.fspath(model))
        if not p.exists() and (str(model).startswith((".", "/", "~")) or p == paths.organism_dir()):
            raise FileNotFoundError(f"model folder {p} does not exist. For the embedded organism run "
                                    f"`erasekit build-organism` (or scripts/main.sh); else pass a folder or hub id.")
    adapter = model if is_adapter else load_model(model, device=device, dtype=dtype)
    world = None
    if data is None:
        if is_adapter:
            raise ValueError("data=None needs an organism folder as model (its world is rebuilt from it); "
                             "pass data= (a World or an MLLMU-Bench folder) with an adapter")
        if not (Path(os.fspath(model)) / "organism_config.json").exists():
            raise ValueError(f"{model} is not an erasekit organism (no organism_config.json), so it has no embedded "
                             f"world: pass data=<folder with the MLLMU-Bench parquet files>")
        source = world = load_world_for(os.fspath(model))
    elif isinstance(data, (str, os.PathLike)):
        source = MLLMUBench(data)
    elif hasattr(data, "split"):
        source = data
        world = data if hasattr(data, "portrait") else None
    else:
        raise TypeError(f"data must be None, a folder or an object with split(name), got {type(data).__name__}")
    if safety_world is None:
        safety_world = world if world is not None else make_world(20, 1, seed=0)
    out = Default(adapter, source, world, safety_world, model_key(model), _data_key(source),
                  partition_profiles(source))
    _MEMO[memo] = out
    return out


# ----------------------------------------------------------------------------------------------------------------
# caching


def _path(step: str, key: str) -> Path:
    return paths.cache_dir() / step / key[:24]


def _cached(step: str, key: str, compute: Callable[[], Any], d: Default, hyper: dict, refresh: bool = False):
    """Load the artifact for ``key`` or compute and save it; counts hits/misses in :data:`STATS`."""
    memo = (step, key)
    if not refresh and memo in _MEMO:
        STATS[f"{step}:hit"] += 1
        return _MEMO[memo]
    path = _path(step, key)
    if not refresh and artifact_exists(path, data_hash=key):
        STATS[f"{step}:hit"] += 1
        obj = load_artifact(path)
    else:
        STATS[f"{step}:miss"] += 1
        obj = compute()
        save_artifact(path, obj, model_id=d.model_id, hyperparameters=hyper, data_hash=key)
    _MEMO[memo] = obj
    return obj


def _cached_frame(step: str, key: str, compute: Callable[[], pd.DataFrame], refresh: bool = False) -> pd.DataFrame:
    """Same for DataFrames: a parquet file named by the key, written atomically."""
    memo = (step, key)
    if not refresh and memo in _MEMO:
        STATS[f"{step}:hit"] += 1
        return _MEMO[memo].copy()
    path = _path(step, key).with_suffix(".parquet")
    if not refresh and path.exists():
        STATS[f"{step}:hit"] += 1
        df = pd.read_parquet(path)
    else:
        STATS[f"{step}:miss"] += 1
        df = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            _parquet_safe(df).to_parquet(tmp, index=False)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        df = pd.read_parquet(path)  # the same types on a miss as on a hit
    _MEMO[memo] = df
    return df.copy()


def _parquet_safe(df: pd.DataFrame) -> pd.DataFrame:
    # Mixed-type object columns (ids that are ints in one split and strings in another, None targets) become str.
    df = df.copy()
    for c in df.columns:
        if df[c].dtype == object:
            types = {type(v) for v in df[c] if v is not None}
            if len(types) > 1 or (types and not types <= {str, bool}):
                df[c] = df[c].map(lambda v: None if v is None else str(v))
    return df


def _key_of(obj: Any) -> str:
    """The cache key an upstream result carries, or a hash of the object itself."""
    meta = getattr(obj, "meta", None)
    if isinstance(meta, dict) and "cache_key" in meta:
        return meta["cache_key"]
    if isinstance(obj, ForgetRetain):
        return obj.key
    return cache_key(obj=obj)


def _image_digests(images: Sequence[Any]) -> list[Any]:
    """Per-image content digests, computed once per distinct object (portraits repeat across questions)."""
    seen: dict[int, str] = {}
    out = []
    for im in images:
        if im is None:
            out.append(None)
            continue
        if id(im) not in seen:
            seen[id(im)] = cache_key(image=im)
        out.append(seen[id(im)])
    return out


def _default_layers(d: Default, layers: Sequence[int] | None) -> list[int]:
    return check_layers(d.adapter, layers)


# ----------------------------------------------------------------------------------------------------------------
# (b) text-only refusal direction


def safety_pairs(d: Default, heldout: bool = False, n: int | None = None) -> tuple[list[str], list[str]]:
    """Paired (harmful prompts, jailbreak-wrapped versions) from :func:`erasekit.world.safety_prompts`.

    ``heldout=False``: the training phrasings (for directions); True: held-out phrasings (for checks).
    ``n``: the first n pairs (None: all).
    """
    from .world import safety_prompts

    sp = [s for s in safety_prompts(d.safety_world) if s.heldout == heldout and s.kind in ("harmful", "jailbreak")]
    harmful = [s.prompt for s in sp if s.kind == "harmful"]
    jail = [s.prompt for s in sp if s.kind == "jailbreak"]
    assert len(harmful) == len(jail), "safety_prompts yields each harmful prompt followed by its jailbreak"
    if n is not None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        harmful, jail = harmful[:n], jail[:n]
    return harmful, jail


def _generate(d: Default, prompts: list[str], images: list | None, batch_size: int, progress: bool,
              desc: str) -> list[str]:
    from tqdm.auto import tqdm

    out = []
    for s in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress):
        ims = None if images is None else images[s:s + batch_size]
        batch = d.adapter.encode(prompts[s:s + batch_size], images=ims)
        with torch.no_grad():
            out += d.adapter.generate(batch, max_new_tokens=32)
    return out


def _filter_behaviour(d: Default, refuse_q, refuse_im, comply_q, comply_im, batch_size, progress):
    """Keep harmful inputs the model refuses and jailbreak inputs it complies with (non-degenerate)."""
    r = _generate(d, refuse_q, refuse_im, batch_size, progress, "check refusals")
    c = _generate(d, comply_q, comply_im, batch_size, progress, "check compliance")
    keep_r = [i for i, t in enumerate(r) if is_refusal(t)]
    keep_c = [i for i, t in enumerate(c) if not is_refusal(t) and not is_degenerate(t)]
    if len(keep_r) < 2 or len(keep_c) < 2:
        raise RuntimeError(
            f"behaviour filter left {len(keep_r)} refused harmful and {len(keep_c)} complied jailbreak inputs "
            f"(of {len(r)} / {len(c)}); the model does not separate the two groups. Pass filter=False to use all "
            f"prompts, or check the chat template (a wrong template gives empty or '!!!!' outputs).")
    return keep_r, keep_c, {"n_refused": len(keep_r), "n_complied": len(keep_c), "n_checked": len(r)}


def refusal_direction(d: Default, n_pairs: int | None = None, layers: Sequence[int] | None = None,
                      filter: bool = True, batch_size: int = 16, progress: bool = True,
                      refresh: bool = False) -> ErasureDirection:
    """(b) Text-only erasure direction (Eq. 3): mean h(harmful, refused) − mean h(jailbreak-wrapped, complied).

    No image; last prompt token; residual stream at the input of every decoder layer (``layers``: default all).

    Args:
        d: from :func:`load_default`.
        n_pairs: use the first n (harmful, jailbreak) training pairs (None: all; the paper uses 17).
        filter: keep only harmful prompts the model actually refuses and jailbreaks it complies with.

    Returns:
        :class:`ErasureDirection` ``{layer: (d,)}`` float64, ``meta["cache_key"]`` set.
    """
    layers = _default_layers(d, layers)
    harmful, jail = safety_pairs(d, heldout=False, n=n_pairs)
    key = cache_key(step="refusal_direction", version=VERSION, model=d.model_key, harmful=harmful, jailbreak=jail,
                    layers=layers, filter=filter)

    def compute():
        h, j = harmful, jail
        info = {}
        if filter:
            kr, kc, info = _filter_behaviour(d, h, None, j, None, batch_size, progress)
            h, j = [h[i] for i in kr], [j[i] for i in kc]
        pos = collect_activations(d.adapter, h, layers=layers, batch_size=batch_size, progress=progress)
        neg = collect_activations(d.adapter, j, layers=layers, batch_size=batch_size, progress=progress)
        return diff_in_means(pos, neg, meta={"model_id": d.model_id, "kind": "text_only", "site": "layer_input",
                                             "position": "last", **info})

    out = _cached("refusal_direction", key, compute, d, {"n_pairs": n_pairs, "layers": layers, "filter": filter},
                  refresh)
    out.meta["cache_key"] = key
    return out


# ----------------------------------------------------------------------------------------------------------------
# (c) PGD adversarial images


def images_to_tensor(images: Sequence[Any]) -> Tensor:
    """PIL images (same size) -> (B, 3, H, W) float in [0, 1]."""
    import numpy as np

    arrs = [torch.from_numpy(np.array(im.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1) for im in images]
    return torch.stack(arrs).float() / 255.0


def clean_images(d: Default, n_images: int | None = None, folder: str | None = None) -> tuple[list[str], Tensor]:
    """(names, (B, 3, H, W)) clean natural images at the model's image size (``folder``: e.g. ImageNet val JPEGs)."""
    from .world import natural_images

    ims = natural_images(d.image_size, folder=folder)
    names = list(ims)[: n_images if n_images is not None else None]
    if not names:
        raise ValueError("no natural images")
    return names, images_to_tensor([ims[n] for n in names])


def adversarial_images(d: Default, eps: float | None = 16 / 255, alpha: float = 1 / 255, steps: int = 500,
                       n_images: int | None = 8, k: int = 8, n_pairs: int | None = None, folder: str | None = None,
                       random_start: bool = False, seed: int = 0, progress: bool = True,
                       refresh: bool = False) -> AdversarialImages:
    """(c) PGD images (Eq. 5–6) from clean natural images, maximising the likelihood of harmful targets.

    Image i is paired with the harmful training prompts i, i + B, i + 2B, ... (B images); each step samples k
    targets from :data:`erasekit.world.HARMFUL_TARGETS` and k of those prompts, in one batched forward.

    Args:
        eps: L∞ radius (16/255) or None (unconstrained, only [0, 1]); alpha: step size; steps: PGD steps.
        n_images: how many natural images (None: all 8); folder: your own clean images instead.
        k: targets per step; n_pairs: harmful prompts used (None: all training prompts).

    Returns:
        :class:`AdversarialImages` with ``images`` (B, 3, H, W), ``loss_history`` (B, steps), and in ``meta``:
        ``clean_key``, ``names``, ``prompts`` (per image, JSON), ``cache_key``.
    """
    from tqdm.auto import tqdm

    from .world import HARMFUL_TARGETS

    names, clean = clean_images(d, n_images, folder)
    harmful, _ = safety_pairs(d, heldout=False, n=n_pairs)
    b = clean.shape[0]
    prompts = [[harmful[j] for j in range(i, len(harmful), b)] or [harmful[i % len(harmful)]] for i in range(b)]
    hyper = {"eps": eps, "alpha": alpha, "steps": steps, "k": k, "random_start": random_start, "seed": seed}
    key = cache_key(step="adversarial_images", version=VERSION, model=d.model_key, clean=clean, prompts=prompts,
                    targets=list(HARMFUL_TARGETS), **hyper)

    def compute():
        results = []
        for i in tqdm(range(b), desc="PGD images", disable=not progress):
            gen = torch.Generator().manual_seed(seed + i)
            loss = harmful_target_loss(d.adapter, prompts[i], HARMFUL_TARGETS, k=k, generator=gen)
            x = clean[i].to(device=d.adapter.device, dtype=torch.float32)
            results.append(pgd_attack(loss, x, eps=eps, alpha=alpha, steps=steps, random_start=random_start,
                                      seed=seed + i, progress=progress))
        for r in results:
            r.image = r.image.cpu()
        return AdversarialImages.from_results(results, meta={"model_id": d.model_id, "names": names,
                                                             "prompts": prompts, **hyper})

    out = _cached("adversarial_images", key, compute, d, hyper, refresh)
    out.meta.update(cache_key=key, clean_names=names)
    return out


# ----------------------------------------------------------------------------------------------------------------
# (d) multimodal erasure direction


def _mm_pairs(d: Default, adv: AdversarialImages, n_pairs: int | None):
    harmful, jail = safety_pairs(d, heldout=False, n=n_pairs)
    names = adv.meta.get("clean_names") or adv.meta.get("names")
    _, clean = clean_images(d, len(names))
    b = adv.images.shape[0]
    if clean.shape != adv.images.shape:
        raise ValueError(f"clean images {tuple(clean.shape)} do not match the adversarial ones "
                         f"{tuple(adv.images.shape)} (made for another model or image folder?)")
    idx = [i % b for i in range(len(harmful))]
    return harmful, jail, [clean[i] for i in idx], [adv.images[i] for i in idx]


def multimodal_direction(d: Default, adv: AdversarialImages, n_pairs: int | None = None,
                         layers: Sequence[int] | None = None, filter: bool = True, batch_size: int = 16,
                         progress: bool = True, refresh: bool = False) -> ErasureDirection:
    """(d) Multimodal erasure direction (Eq. 7).

    D+ = (clean natural image i, harmful prompt i) that the model refuses; D- = (PGD image i, jailbreak-wrapped
    prompt i) that it complies with; image i cycles over the B images of ``adv`` (the same pairing as in
    :func:`adversarial_images`). Last prompt token, layer inputs, all layers by default.
    """
    layers = _default_layers(d, layers)
    harmful, jail, clean, advs = _mm_pairs(d, adv, n_pairs)
    key = cache_key(step="multimodal_direction", version=VERSION, model=d.model_key, adv=_key_of(adv),
                    harmful=harmful, jailbreak=jail, layers=layers, filter=filter, clean=torch.stack(clean))

    def compute():
        h, hi, j, ji = harmful, clean, jail, advs
        info = {}
        if filter:
            kr, kc, info = _filter_behaviour(d, h, hi, j, ji, batch_size, progress)
            h, hi = [h[i] for i in kr], [hi[i] for i in kr]
            j, ji = [j[i] for i in kc], [ji[i] for i in kc]
        pos = collect_activations(d.adapter, h, hi, layers=layers, batch_size=batch_size, progress=progress)
        neg = collect_activations(d.adapter, j, ji, layers=layers, batch_size=batch_size, progress=progress)
        return diff_in_means(pos, neg, meta={"model_id": d.model_id, "kind": "multimodal", "site": "layer_input",
                                             "position": "last", "adversarial_key": _key_of(adv), **info})

    out = _cached("multimodal_direction", key, compute, d, {"n_pairs": n_pairs, "layers": layers, "filter": filter},
                  refresh)
    out.meta["cache_key"] = key
    return out


# ----------------------------------------------------------------------------------------------------------------
# (e) forget / retain activations


def group_rows(d: Default, forget_pct: int, groups: Sequence[str] = ("Fgt", "Test", "Ret", "Cele"),
               role: str = "eval", retain_sample: int | None = None, celeb_sample: int | None = None
               ) -> dict[str, list]:
    """``{group: rows}``: Fgt / Test from the forget split; Ret / Cele are the ``role`` profiles of ``d.partition``
    (``eval``: scored, ``tune``: hyperparameter rules, ``fit``: H_r), the first ``*_sample`` of them if given.

    This is the one place where profiles get their role, so scored profiles never enter a fit or a tuning set.
    """
    part = d.partition or partition_profiles(d.source)
    fixed = [g for g in groups if g in ("Fgt", "Test")]
    out = benchmark_rows(d.source, forget_pct, fixed) if fixed else {}
    role_rows = part.rows(d.source, forget_pct, role) if {"Ret", "Cele"} & set(groups) else {}
    caps = {"Ret": retain_sample, "Cele": celeb_sample}
    for g in groups:
        if g in ("Ret", "Cele"):
            out[g] = role_rows[g][:caps[g]] if caps[g] is not None else role_rows[g]
        elif g not in out:
            raise ValueError(f"unknown group {g!r}; expected Fgt, Test, Ret or Cele")
    return {g: out[g] for g in groups}


def _group_items(d: Default, forget_pct: int, groups: Sequence[str], retain_sample, celeb_sample, modes, tasks,
                 role: str = "eval"):
    rows = group_rows(d, forget_pct, groups, role, retain_sample, celeb_sample)
    return {g: build_items({g: rows[g]}, modes=modes, tasks=tasks) for g in groups}


def query_activations(d: Default, forget_pct: int = 5, groups: Sequence[str] = ("Fgt", "Test", "Ret", "Cele"),
                      retain_sample: int | None = None, celeb_sample: int | None = None,
                      modes: Sequence[str] = ("VQA",), tasks: Sequence[str] = TASKS,
                      layers: Sequence[int] | None = None, role: str = "eval", batch_size: int = 16,
                      progress: bool = True, refresh: bool = False) -> dict[str, dict[int, Tensor]]:
    """(e) Last-token activations at every layer input for the evaluation prompts of each group.

    The prompts are exactly those :func:`erasekit.evaluate.evaluate` generates for (zero-shot protocol), with
    their images: by default image+text questions (``modes=("VQA",)``) of all three tasks, as the authors do.
    Groups: Fgt, Test (forget IDs), Ret and Cele: the ``role`` profiles of ``d.partition`` (``eval`` = scored,
    ``tune``, ``fit``), capped at ``retain_sample`` / ``celeb_sample``.

    Returns:
        ``{group: {layer: (N_group, d)}}`` float32 on CPU.
    """
    layers = _default_layers(d, layers)
    items = _group_items(d, forget_pct, groups, retain_sample, celeb_sample, modes, tasks, role)
    spec = {g: ([it.prompt for it in its], _image_digests([it.image for it in its])) for g, its in items.items()}
    for g, its in items.items():
        if not its:
            raise ValueError(f"group {g} has no {'/'.join(modes)} questions for forget_pct={forget_pct}")
    key = cache_key(step="query_activations", version=VERSION, model=d.model_key, spec=spec, layers=layers)

    def compute():
        out = {}
        for g, its in items.items():
            ims = [it.image for it in its]
            acts = collect_activations(d.adapter, [it.prompt for it in its], None if all(i is None for i in ims)
                                       else ims, layers=layers, batch_size=batch_size, progress=progress)
            out.update({f"{g}.{l}": a for l, a in acts.items()})
        return out

    flat = _cached("query_activations", key, compute, d,
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


def forget_retain_activations(d: Default, forget_pct: int = 5, retain_sample: int | None = None,
                              celeb_sample: int | None = None, layers: Sequence[int] | None = None,
                              modes: Sequence[str] = ("VQA",), progress: bool = True,
                              refresh: bool = False) -> ForgetRetain:
    """(e) H_f = forget_k questions; H_r = questions of the ``fit`` retain profiles + ``fit`` celebrities of
    ``d.partition`` (``*_sample``: profile caps). Scored and tuning profiles never enter H_r; ``meta["retain_ids"]``
    lists the profiles that did."""
    acts = query_activations(d, forget_pct, ("Fgt", "Ret", "Cele"), retain_sample, celeb_sample, modes=modes,
                             layers=layers, role="fit", progress=progress, refresh=refresh)
    fit_rows = group_rows(d, forget_pct, ("Ret", "Cele"), "fit", retain_sample, celeb_sample)
    retain = {l: torch.cat([acts["Ret"][l], acts["Cele"][l]]) for l in acts["Fgt"]}
    key = cache_key(step="forget_retain", version=VERSION, model=d.model_key, forget_pct=forget_pct,
                    partition=d.partition.key() if d.partition else None, retain_sample=retain_sample, celeb_sample=celeb_sample, layers=sorted(acts["Fgt"]),
                    modes=list(modes), data=d.data_key)
    l0 = min(acts["Fgt"])
    meta = {"forget_pct": forget_pct, "n_forget": int(acts["Fgt"][l0].shape[0]),
            "n_retain": int(acts["Ret"][l0].shape[0]), "n_celebrity": int(acts["Cele"][l0].shape[0]),
            "retain_sample": retain_sample, "celeb_sample": celeb_sample, "modes": list(modes),
            "retain_ids": sorted(r["ID"] for rs in fit_rows.values() for r in rs)}
    return ForgetRetain(acts["Fgt"], retain, key, meta)


# ----------------------------------------------------------------------------------------------------------------
# (f) the steerer and its interventions


def fit_steering(d: Default, direction: ErasureDirection, acts: ForgetRetain, gamma: float = 0.1,
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
    layers = list(range(1, d.num_layers)) if layers is None else check_layers(d.adapter, layers)
    hyper = {"gamma": gamma, "null_space": null_space, "layers": layers, "kind": kind, **mlp_kwargs}
    if kind == "rank_one" and (gate, gamma_scale) != ("nullspace", "absolute"):
        hyper.update(gate=gate, gamma_scale=gamma_scale, alpha=alpha)
    key = cache_key(step="fit_steering", version=VERSION, model=d.model_key, direction=_key_of(direction),
                    acts=acts.key, **hyper)

    def compute():
        if kind == "rank_one":
            s = fit_steerer(acts.forget, acts.retain, direction, gamma, null_space, layers=layers, gate=gate,
                            gamma_scale=gamma_scale, alpha=alpha)
        else:
            s = fit_mlp_steerer(acts.forget, acts.retain, direction, null_space, layers=layers, **mlp_kwargs)
        s.meta.update(model_id=d.model_id)
        return s

    out = _cached("fit_steering", key, compute, d, hyper, refresh)
    out.meta["cache_key"] = key
    return out


def fit_default_steering(d: Default, direction: ErasureDirection, forget_pct: int = 5, *,
                         fit_modes: Sequence[str] = ("VQA", "QA"), retain_sample: int | None = None,
                         celeb_sample: int | None = None, alpha: float = 1.0,
                         gammas: Sequence[float] = GAMMA_GRID, margin: float = LAYER_AUC_MARGIN,
                         floor_quantile: float | None = 0.9, layers: Sequence[int] | None = None,
                         progress: bool = True, refresh: bool = False) -> InputAwareSteerer:
    """(f) erasekit's default steerer: the contrastive gate with γ, layers and floors chosen by
    :func:`erasekit.tuning.choose_gate` on the forget set and the ``tune`` retain profiles only.

    H_f = the forget split's questions, H_r = the ``fit`` profiles (:func:`forget_retain_activations`), the tuning
    negatives = questions of the ``tune`` retain profiles, all in ``fit_modes``. Candidate layers: 1..L-1.
    Use it with ``Steering(steerer, read="frozen")`` (gates read from an unsteered pass).
    """
    acts = forget_retain_activations(d, forget_pct, retain_sample, celeb_sample, modes=fit_modes,
                                     progress=progress)
    tune = query_activations(d, forget_pct, ("Ret",), modes=fit_modes, role="tune", progress=progress)["Ret"]
    layers = list(range(1, d.num_layers)) if layers is None else check_layers(d.adapter, layers)
    hyper = {"alpha": alpha, "gammas": [float(g) for g in gammas], "margin": margin,
             "floor_quantile": floor_quantile, "layers": layers}
    key = cache_key(step="fit_default_steering", version=VERSION, model=d.model_key, direction=_key_of(direction),
                    acts=acts.key, modes=list(fit_modes),
                    tune=[r["ID"] for r in group_rows(d, forget_pct, ("Ret",), "tune")["Ret"]], **hyper)

    def compute():
        st = choose_gate(acts.forget, acts.retain, tune, direction, layers, gammas, alpha, margin, floor_quantile)
        st.meta.update(model_id=d.model_id, retain_ids=acts.meta["retain_ids"])
        return st

    out = _cached("fit_default_steering", key, compute, d, hyper, refresh)
    out.meta["cache_key"] = key
    return out


@dataclasses.dataclass
class Steering:
    """An intervention for :func:`evaluate_steering`: what to add, how strongly per task, and where.

    Attributes:
        steerer: a fitted :class:`InputAwareSteerer` (input-aware, Eq. 13), or
        direction: an :class:`ErasureDirection` for the input-unaware ablation (Eq. 4: λ d_l at every layer);
            exactly one of the two.
        strengths: λ per task (classification / generation / cloze) or one float for all.
        mode: :func:`erasekit.hooks.steer` mode ("prefill": the authors' rule).
        layers: restrict to these layers (default: all of the steerer's; for a direction 1..L-1).
        read: which state the gates read (:func:`erasekit.hooks.steer`): "steered" (the authors: each layer's
            upstream-steered input), "frozen" (an extra unsteered prefill pass) or "anchor" (the first steered
            layer's gate for all).
    """

    steerer: InputAwareSteerer | None = None
    direction: ErasureDirection | None = None
    strengths: Mapping[str, float] | float = dataclasses.field(default_factory=lambda: dict(PAPER_STRENGTHS))
    mode: str = "prefill"
    layers: Sequence[int] | None = None
    read: str = "steered"

    def __post_init__(self):
        if (self.steerer is None) == (self.direction is None):
            raise ValueError("Steering needs exactly one of steerer= (input-aware) or direction= (input-unaware)")
        if isinstance(self.strengths, Mapping):
            missing = set(TASKS) - set(self.strengths)
            if missing:
                raise ValueError(f"strengths has no λ for tasks {sorted(missing)}; give all of {TASKS} or one float")

    def strength(self, task: str) -> float:
        return float(self.strengths if not isinstance(self.strengths, Mapping) else self.strengths[task])

    def operators(self, task: str, num_layers: int) -> dict:
        lam = self.strength(task)
        if self.steerer is not None:
            ops = self.steerer.operators(lam)
            keep = ops.keys() if self.layers is None else self.layers
            return {l: ops[l] for l in keep}
        layers = list(range(1, num_layers)) if self.layers is None else list(self.layers)
        return constant_operators(self.direction, lam, layers)

    def interventions(self, adapter: Any) -> dict[str, Callable[[], Any]]:
        """``{task: context-manager factory}`` for :func:`erasekit.evaluate.evaluate`."""
        ops = {t: self.operators(t, adapter.num_layers) for t in TASKS}
        return {t: (lambda o=ops[t]: self.context(adapter, o)) for t in TASKS}

    def context(self, adapter: Any, ops: Mapping[int, Any], record: dict | None = None):
        """The :func:`erasekit.hooks.steer` context for these operators with this steering's mode and reading
        (``record``: see :func:`erasekit.hooks.steer`)."""
        read = self.read if self.steerer is not None else "steered"
        return steer(adapter, ops, mode=self.mode, read=read, anchor=min(ops) if read == "anchor" else None,
                     record=record)

    def key(self) -> str:
        what = _key_of(self.steerer) if self.steerer is not None else _key_of(self.direction)
        strengths = dict(self.strengths) if isinstance(self.strengths, Mapping) else float(self.strengths)
        return cache_key(what=what, kind="input_aware" if self.steerer is not None else "constant",
                         strengths=strengths, mode=self.mode, layers=None if self.layers is None else
                         [int(l) for l in self.layers], **({} if self.read == "steered" else {"read": self.read}))


# ----------------------------------------------------------------------------------------------------------------
# (g) evaluation


def _evaluate_rows(d: Default, rows_by_group: Mapping[str, list], steering: Steering | None, method: str, *,
                   forget_pct: int = 5,
                   modes: Sequence[str] = ("VQA", "QA"), tasks: Sequence[str] = TASKS, batch_size: int = 16,
                   max_new_tokens: int = 50, progress: bool = True, refresh: bool = False,
                   extra_key: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Cached :func:`erasekit.evaluate.evaluate` of ``{group: rows}`` (keyed by the exact prompts and images)."""
    items = {g: build_items({g: rows}, modes=modes, tasks=tasks) for g, rows in rows_by_group.items()}
    spec = {g: ([it.prompt for it in its], _image_digests([it.image for it in its])) for g, its in items.items()}
    key = cache_key(step="evaluate", version=VERSION, model=d.model_key, spec=spec,
                    forget_pct=forget_pct, steering=None if steering is None else steering.key(),
                    max_new_tokens=max_new_tokens, modes=list(modes), tasks=list(tasks), **dict(extra_key or {}))
    def compute():
        inter = None if steering is None else steering.interventions(d.adapter)
        return evaluate(d.adapter, dict(rows_by_group), forget_pct, groups=list(rows_by_group), modes=modes, tasks=tasks,
                        intervention=inter, batch_size=batch_size, max_new_tokens=max_new_tokens,
                        progress=progress)

    df = _cached_frame("evaluate", key, compute, refresh)
    df["method"] = method
    return df


def evaluate_steering(d: Default, forget_pct: int = 5, steering: Steering | None = None, method: str | None = None,
                      *, groups: Sequence[str] = ("Fgt", "Test", "Ret", "Cele"), modes: Sequence[str] = ("VQA", "QA"),
                      tasks: Sequence[str] = TASKS, retain_sample: int | None = None,
                      celeb_sample: int | None = None, batch_size: int = 16,
                      max_new_tokens: int = 50, progress: bool = True, refresh: bool = False) -> pd.DataFrame:
    """(g) :func:`erasekit.evaluate.evaluate` (zero-shot MLLMU-Bench protocol), vanilla or with ``steering``.

    Ret / Cele are the held-out ``eval`` profiles of ``d.partition`` (the first ``retain_sample`` /
    ``celeb_sample`` of them): never in H_r, never in a tuning set.
    Returns one row per (question, image); cached as parquet (the generations are the expensive part).
    ``method`` labels the rows (default "Vanilla" / "Steered").
    """
    method = method or ("Vanilla" if steering is None else "Steered")
    rows = group_rows(d, forget_pct, groups, "eval", retain_sample, celeb_sample)
    return _evaluate_rows(d, rows, steering, method, forget_pct=forget_pct, modes=modes, tasks=tasks,
                          batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress, refresh=refresh)


def results(d: Default, forget_pct: int = 5, steering: Steering | Mapping[str, Steering] | None = None,
            **kwargs) -> pd.DataFrame:
    """Table-1 layout (:func:`erasekit.evaluate.results_table`) of Vanilla and each steering ({name: Steering})."""
    from .evaluate import results_table

    runs = {"Vanilla": None}
    if isinstance(steering, Steering):
        runs["Steered"] = steering
    elif steering is not None:
        runs.update(steering)
    frames = [evaluate_steering(d, forget_pct, s, method=name, **kwargs) for name, s in runs.items()]
    return results_table(pd.concat(frames, ignore_index=True))


def tuning_rows(d: Default, forget_pct: int = 5, n_retain: int | None = None) -> dict[str, list]:
    """Rows for choosing hyperparameters: ``{"Fgt": forget_k rows, "Ret": the tune profiles of d.partition}``.

    The forget set is what the user hands over, so tuning on it is legitimate; the retain side is the partition's
    ``tune`` role (the first ``n_retain`` of it), disjoint from the scored and the H_r profiles.
    """
    return group_rows(d, forget_pct, ("Fgt", "Ret"), "tune", n_retain)


def _task_scores(df: pd.DataFrame) -> pd.DataFrame:
    """Mean score per (split, task): accuracy (0-1) for classification/cloze, ROUGE-L for generation."""
    return df.groupby(["split", "task"])["score"].mean().unstack("task")


def choose_strengths(d: Default, make: Callable[[float], Steering], grid: Sequence[float] = (0.1, 0.25, 0.5, 1.0, 2.0),
                     forget_pct: int = 5, n_retain: int | None = None,
                     max_retain_drop: float = 0.05, modes: Sequence[str] = ("VQA", "QA"), tasks: Sequence[str] = TASKS,
                     batch_size: int = 16, max_new_tokens: int = 50, progress: bool = True
                     ) -> tuple[dict[str, float], pd.DataFrame]:
    """The documented rule for λ (per task): forget most while keeping retain utility.

    For each λ in ``grid``, ``make(λ)`` (a :class:`Steering` with that strength for every task) is scored on
    :func:`tuning_rows`. Per task, the chosen λ has the lowest forget score among those whose retain score is at
    most ``max_retain_drop`` (absolute, on the 0-1 scale: 0.05 = 5 accuracy points or 0.05 ROUGE-L) below the
    vanilla model's; if no λ qualifies, the smallest λ in the grid. Ties go to the smaller λ.

    Scores average over ``modes`` (default: image and text questions, as the tables do).

    Returns ``({task: λ}, frame)`` with the forget / retain score of every (λ, task), Vanilla as λ = 0, and
    columns ``within budget`` and ``chosen``.
    """
    rows = tuning_rows(d, forget_pct, n_retain)
    kw = dict(forget_pct=forget_pct, modes=modes, tasks=tasks, batch_size=batch_size, max_new_tokens=max_new_tokens,
              progress=progress, extra_key={"purpose": "tune"})
    recs = []
    for lam in [0.0, *sorted(grid)]:
        steering = None if lam == 0 else make(lam)
        sc = _task_scores(_evaluate_rows(d, rows, steering, f"λ={lam:g}", **kw))
        for t in tasks:
            recs.append({"lambda": lam, "task": t, "forget": float(sc.loc["Fgt", t]), "retain": float(sc.loc["Ret", t])})
    table = pd.DataFrame(recs)
    base = table[table["lambda"] == 0].set_index("task")["retain"]
    table["within budget"] = table["retain"] >= table["task"].map(base) - max_retain_drop
    chosen = {}
    for t in tasks:
        ok = table[(table["task"] == t) & (table["lambda"] > 0) & table["within budget"]]
        chosen[t] = float(ok.sort_values(["forget", "lambda"]).iloc[0]["lambda"]) if len(ok) else float(min(grid))
    table["chosen"] = [chosen[t] == lam for lam, t in zip(table["lambda"], table["task"])]
    return chosen, table


# ----------------------------------------------------------------------------------------------------------------
# (h) training-based baselines, scored by the same harness


@dataclasses.dataclass
class BaselineRun:
    """One baseline at one forget ratio: its evaluation rows and what it cost (:meth:`UnlearnResult.summary`)."""

    frame: pd.DataFrame
    summary: dict


def baseline_data(d: Default, forget_pct: int, retain_train: int | None = 40, modes: Sequence[str] = ("VQA", "QA"),
                  ) -> tuple[list, list]:
    """(forget examples, retain examples) for :func:`erasekit.baselines.unlearn`: all forget_k rows, and the
    ``fit`` retain profiles of ``d.partition`` (the first ``retain_train``; None: all) plus its ``fit``
    celebrities: the same retain data MLLMEraser's H_r sees, never a scored profile."""
    from .baselines import build_examples

    fgt = d.source.split(f"forget_{forget_pct}")
    rows = group_rows(d, forget_pct, ("Ret", "Cele"), "fit", retain_train)
    return build_examples(fgt, modes=modes), build_examples(rows["Ret"] + rows["Cele"], modes=modes)


def run_baseline(d: Default, forget_pct: int, config: Any, *, retain_train: int | None = 40,
                 retain_sample: int | None = None, celeb_sample: int | None = None,
                 groups: Sequence[str] = ("Fgt", "Test", "Ret", "Cele"), modes: Sequence[str] = ("VQA", "QA"),
                 tasks: Sequence[str] = TASKS, batch_size: int = 16, max_new_tokens: int = 50,
                 progress: bool = True, refresh: bool = False) -> BaselineRun:
    """Unlearn with one baseline (:func:`erasekit.baselines.unlearn`) and score it like every other method.

    The unlearned model lives only in memory (the organism on disk is never touched); the evaluation rows and the
    cost summary are cached together, keyed by the model, the config, the training data and the evaluation spec.
    """
    import json

    from .baselines import unlearn

    cfg = dataclasses.asdict(config)
    cfg.pop("progress", None)
    eval_rows = group_rows(d, forget_pct, groups, "eval", retain_sample, celeb_sample)
    key = cache_key(step="baseline", version=VERSION, model=d.model_key, method=config.method, config=cfg,
                    forget_pct=forget_pct, retain_train=retain_train, data=d.data_key,
                    train_ids={g: [r["ID"] for r in rs] for g, rs in
                               group_rows(d, forget_pct, ("Ret", "Cele"), "fit", retain_train).items()},
                    eval_ids={g: [r["ID"] for r in rs] for g, rs in eval_rows.items()}, modes=list(modes),
                    tasks=list(tasks), max_new_tokens=max_new_tokens)
    summary_path = _path("baseline", key).with_suffix(".json")
    box: dict = {}

    def compute():
        forget, retain = baseline_data(d, forget_pct, retain_train)
        res = unlearn(d.adapter, forget, retain, config)
        box["summary"] = res.summary()
        return evaluate(res.adapter, eval_rows, forget_pct, groups=list(eval_rows), modes=modes, tasks=tasks,
                        batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress)

    if refresh or not summary_path.exists():  # the frame and its summary are (re)made together
        frame = _cached_frame("baseline", key, compute, refresh=True)
        summary_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = summary_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(box["summary"], indent=1))
        os.replace(tmp, summary_path)
    else:
        frame = _cached_frame("baseline", key, compute)
    frame["method"] = config.method
    return BaselineRun(frame, json.loads(summary_path.read_text()))


# ----------------------------------------------------------------------------------------------------------------
# (i) separability of the steering norm (paper Fig. 8) and activations before / after steering (Fig. 4)


def steering_norms(steerer: InputAwareSteerer, acts: Mapping[int, Tensor], strength: float) -> dict[int, Tensor]:
    """‖λ f_l(h)‖ per layer for activations ``{layer: (N, d)}`` (rank one: λ |g·h| ‖d_l‖)."""
    out = {}
    for l in steerer.layers:
        if l in acts:
            out[l] = (strength * steerer[l](acts[l].double())).norm(dim=-1).float()
    return out


def separability(steerer: InputAwareSteerer, forget: Mapping[int, Tensor], retain: Mapping[int, Tensor],
                 strength: float = 1.0) -> pd.DataFrame:
    """Per layer: median ‖λ f(h)‖ on forget and retain queries, their ratio, and the AUC (forget > retain).

    AUC = 1: every forget query gets a larger push than every retain query; 0.5: no separation.
    """
    nf, nr = steering_norms(steerer, forget, strength), steering_norms(steerer, retain, strength)
    recs = []
    for l in nf:
        mf, mr = float(nf[l].median()), float(nr[l].median())
        recs.append({"layer": l, "median forget": mf, "median retain": mr,
                     "ratio": mf / mr if mr > 0 else float("inf"), "AUC": auc(nf[l], nr[l])})
    return pd.DataFrame(recs).set_index("layer")


def steered_activations(d: Default, forget_pct: int, steering: Steering | None, layer: int,
                        groups: Sequence[str] = ("Fgt", "Ret"), task: str = "generation", n: int | None = 20,
                        mode: str = "VQA", batch_size: int = 16, progress: bool = True) -> dict[str, Tensor]:
    """Last-token input of ``layer`` for the ``mode`` ``task`` prompts of each group (``n`` profiles), with the
    steering active (its prefill rule; the captured input includes the push at ``layer`` itself) or without."""
    check_layers(d.adapter, [layer])
    items = _group_items(d, forget_pct, groups, n, n, (mode,), (task,))
    ops = None if steering is None else steering.operators(task, d.num_layers)
    out = {}
    for g, its in items.items():
        with (steering.context(d.adapter, ops) if ops is not None else contextlib.nullcontext()):
            ims = None if mode == "QA" else [it.image for it in its]
            acts = collect_activations(d.adapter, [it.prompt for it in its], ims, layers=[layer],
                                       batch_size=batch_size, progress=progress)
        out[g] = acts[layer]
    return out


def gate_reads(d: Default, forget_pct: int, steering: Steering, groups: Sequence[str] = ("Fgt", "Ret", "Cele"),
               task: str = "cloze", mode: str = "QA", n: int | None = None, read: str | None = None,
               batch_size: int = 16) -> dict[str, dict[int, Tensor]]:
    """The gate value each steered layer reads during one steered prefill of the ``task`` prompts per group.

    With the authors' reading (``read="steered"``) a layer reads a state that earlier layers already pushed, so
    its gate can leave the range it was fitted on (the cascade, METHOD.md §8); ``"frozen"`` reads the unsteered
    pass. ``read`` overrides the steering's own. Returns ``{group: {layer: (N,) raw gate values}}`` (eval profiles).
    """
    items = _group_items(d, forget_pct, groups, n, n, (mode,), (task,))
    ops = steering.operators(task, d.num_layers)
    how = dataclasses.replace(steering, read=read) if read is not None else steering
    out = {}
    for g, its in items.items():
        rec: dict = {}
        for s in range(0, len(its), batch_size):
            chunk = its[s:s + batch_size]
            ims = None if mode == "QA" else [it.image for it in chunk]
            batch = d.adapter.encode([it.prompt for it in chunk], images=ims)
            with torch.no_grad(), how.context(d.adapter, ops, record=rec):
                d.adapter.model(**batch)
        out[g] = {l: torch.cat(v) for l, v in sorted(rec.items())}
    return out


# ----------------------------------------------------------------------------------------------------------------
# safety checks


def safety_rates(d: Default, kinds: Sequence[str] = ("harmful", "jailbreak", "harmless"), image: Any = None,
                 intervention: Callable[[], Any] | None = None, heldout_only: bool = True, batch_size: int = 16,
                 progress: bool = True) -> pd.DataFrame:
    """Refusal rate (%) per kind of held-out safety prompt (:func:`erasekit.evaluate.refusal_rates`).

    ``image``: None, "natural" (the clean natural images, round-robin), a list of PIL images or (3,H,W) tensors,
    or a (B, 3, H, W) tensor. Not cached (one short generation per prompt).
    """
    from .evaluate import refusal_rates

    if isinstance(image, str):
        if image != "natural":
            raise ValueError(f"image must be None, 'natural', images or a tensor; got {image!r}")
        image = list(clean_images(d)[1])
    elif isinstance(image, Tensor) and image.ndim == 4:
        image = list(image)
    df = evaluate_safety(d.adapter, d.safety_world, kinds=kinds, heldout_only=heldout_only, image=image,
                         intervention=intervention, batch_size=batch_size, progress=progress)
    return refusal_rates(df)


def attack_success(d: Default, adv: AdversarialImages, batch_size: int = 16, progress: bool = True) -> pd.DataFrame:
    """Compliance (%) with held-out harmful and jailbreak prompts paired with the clean vs the PGD images.

    Returns a frame indexed by prompt kind (harmful / jailbreak) with columns ``clean image`` and
    ``adversarial image``: the share of responses that are neither a refusal nor degenerate.
    """
    names = adv.meta.get("clean_names") or adv.meta.get("names")
    _, clean = clean_images(d, len(names))
    out = {}
    for label, ims in (("clean image", clean), ("adversarial image", adv.images)):
        r = safety_rates(d, kinds=("harmful", "jailbreak"), image=ims, batch_size=batch_size, progress=progress)
        out[label] = 100.0 - r["refusal_rate"] - r["degenerate_rate"]
    return pd.DataFrame(out)


def refusal_check(d: Default, direction: ErasureDirection, add_scale: float = 1.0,
                  layers: Sequence[int] | None = None, batch_size: int = 16, progress: bool = True) -> pd.DataFrame:
    """Causal check of a refusal direction on held-out text prompts (Arditi et al. 2024).

    * harmless prompts, vanilla vs with ``add_scale * d_l`` added at ``layers`` (default 1..L-1, prefill);
    * harmful prompts, vanilla vs with d_l projected out of every layer input at every position and step
      (:func:`erasekit.steering.ablation_operator`, mode "all").

    Returns a frame: rows (prompts, intervention), column ``refusal_rate`` (%) and ``n``.
    """
    from .steering import ablation_operator

    layers = list(range(1, d.num_layers)) if layers is None else list(layers)
    add = constant_operators(direction, add_scale, layers)
    # A layer where both groups share the last token's embedding (layer 0) has d_l = 0: nothing to ablate.
    abl = {l: ablation_operator(direction[l]) for l in direction.layers if float(direction[l].norm()) > 0}
    rows = []
    for kind, label, inter in (("harmless", "none", None),
                               ("harmless", f"add {add_scale:g}·d", lambda: steer(d.adapter, add, mode="prefill")),
                               ("harmful", "none", None),
                               ("harmful", "ablate d", lambda: steer(d.adapter, abl, mode="all"))):
        r = safety_rates(d, kinds=(kind,), intervention=inter, batch_size=batch_size, progress=progress)
        rows.append({"prompts": kind, "intervention": label, "refusal_rate": float(r.loc[kind, "refusal_rate"]),
                     "n": int(r.loc[kind, "n"])})
    return pd.DataFrame(rows).set_index(["prompts", "intervention"])


# ----------------------------------------------------------------------------------------------------------------
# reference


def dense_eq12(H_forget: Tensor, P: Tensor, direction: Tensor, gamma: float) -> Tensor:
    """The dense Eq. 12 map W P (d × d, float64), for showing the rank-one identity on real activations.

    W = D H_fᵀ P (P H_f H_fᵀ P + γ P)⁺ with D = d 1ᵀ (paper notation, H_f is d × N_f; here rows). Costs a d × d
    pseudo-inverse: use for small d only.
    """
    Hf = H_forget.double().T  # (d, N_f)
    P = P.double()
    D = direction.double().unsqueeze(1).expand(-1, Hf.shape[1])
    M = P @ Hf @ Hf.T @ P + gamma * P
    W = D @ Hf.T @ P @ torch.linalg.pinv(M, hermitian=True, rtol=1e-10)
    return W @ P


# ----------------------------------------------------------------------------------------------------------------
# small helpers the notebooks read their figures with


def profile_questions(row: Mapping[str, Any]) -> pd.DataFrame:
    """Every question of one benchmark row: columns ``task, type, question, answer``."""
    recs = []
    for kind, key in (("Image_Textual", "Image_Textual_Questions"), ("Pure_Text", "Pure_Text_Questions")):
        for q in row.get("Classification_Task", {}).get(key, []):
            opts = ", ".join(f"{k}. {v}" for k, v in q["Options"].items())
            recs.append({"task": "classification", "type": kind, "question": f"{q['Question']} ({opts})",
                         "answer": q["Correct_Answer"]})
    for task, field in (("generation", "Generation_Task"), ("cloze", "Mask_Task")):
        for q in row.get(field, []):
            recs.append({"task": task, "type": q["Type"], "question": q["Question"], "answer": q["Ground_Truth"]})
    return pd.DataFrame(recs, columns=["task", "type", "question", "answer"])


def generate(d: Default, prompts: Sequence[str], images: Sequence[Any] | None = None,
             intervention: Callable[[], Any] | None = None, max_new_tokens: int = 50, batch_size: int = 16) -> list[str]:
    """Greedy answers to ``prompts`` (with ``images``), inside ``intervention()`` when given."""
    out = []
    for s in range(0, len(prompts), batch_size):
        ims = None if images is None else list(images[s:s + batch_size])
        with (intervention() if intervention is not None else contextlib.nullcontext()), torch.no_grad():
            batch = d.adapter.encode(list(prompts[s:s + batch_size]), images=ims)
            out += d.adapter.generate(batch, max_new_tokens=max_new_tokens)
    return out


def projector_summary(acts: ForgetRetain, null_space: str | float = 0.3,
                      layers: Sequence[int] | None = None) -> pd.DataFrame:
    """Per layer: N_r, d, numerical rank of H_r, kept dimension k, and the share (%) of the retain and forget
    activations' energy ``||P H||² / ||H||²`` that the projector keeps (retain ≈ 0 is the constraint; the
    forget share is what is left for the steering map to act on)."""
    from .nullspace import null_space_projector

    recs = []
    for l in (acts.layers if layers is None else layers):
        Hr, Hf = acts.retain[l].double(), acts.forget[l].double()
        P = null_space_projector(Hr, null_space)
        recs.append({"layer": l, "N_r": Hr.shape[0], "d": Hr.shape[1], "rank(H_r)": P.meta["rank"], "k": P.k,
                     "retain energy kept (%)": 100 * float(P.apply(Hr).norm() ** 2 / Hr.norm() ** 2),
                     "forget energy kept (%)": 100 * float(P.apply(Hf).norm() ** 2 / Hf.norm() ** 2)})
    return pd.DataFrame(recs).set_index("layer")


def example_generations(d: Default, forget_pct: int, steering: Steering, n: int = 2,
                        groups: Sequence[str] = ("Fgt", "Test", "Ret", "Cele"), task: str = "generation",
                        mode: str = "VQA", max_new_tokens: int = 50) -> pd.DataFrame:
    """The first ``n`` questions of ``task`` per group, answered by the vanilla and the steered model.

    Columns: ``group, question, ground truth, vanilla, steered, steered refuses``.
    """
    items = _group_items(d, forget_pct, groups, n, n, (mode,), (task,))
    recs = []
    ops = steering.operators(task, d.num_layers)
    for g in groups:
        its = items[g][:n]
        if not its:
            continue
        ims = None if all(it.image is None for it in its) else [it.image for it in its]
        prompts = [it.prompt for it in its]
        van = generate(d, prompts, ims, max_new_tokens=max_new_tokens)
        ste = generate(d, prompts, ims, lambda: steering.context(d.adapter, ops),
                       max_new_tokens=max_new_tokens)
        for it, a, b in zip(its, van, ste):
            recs.append({"group": g, "question": it.question, "ground truth": it.target, "vanilla": a.strip(),
                         "steered": b.strip(), "steered refuses": is_refusal(b)})
    return pd.DataFrame(recs)
