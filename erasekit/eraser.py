"""The front door: erase what a model knows about a forget set, for any supported model, without the notebooks.

::

    import erasekit as ek
    adapter = ek.load_model("path/to/llava-1.5-7b-hf")                       # or any supported folder / hub id
    eraser = ek.fit_eraser(adapter, forget=[("Where was this person born?", portrait), "Who is Jane Doe?"],
                           retain=["What is the capital of France?", ...], strength="auto")
    answers = eraser.generate(adapter, ["Who is Jane Doe?"])                   # refuses; retain questions answered
    eraser.save("eraser/jane")                                                 # safetensors + JSON sidecar
    eraser = ek.Eraser.load("eraser/jane")

What :func:`fit_eraser` does, each step a stated rule (METHOD.md; notebooks 02–05 show why):

1. The erasure direction per layer: mean last-token layer input of prompts the model refuses minus that of
   prompts it answers; by default erasekit's built-in harmful requests and harmless requests in the same templates
   (the refusal contrast of :func:`erasekit.pipeline.refusal_contrast_direction`, which erasekit's gate uses), or
   yours (``refuse=`` / ``comply=``: e.g. the same harmful requests wrapped in a jailbreak, the paper's text-only
   contrast of Eq. 3), or a given ``direction=`` (e.g. Eq. 7's, :func:`erasekit.pipeline.multimodal_direction`).
   Measured on the organisms: on the first one Eq. 3's contrast refused every forget question from λ = 2 and the
   harmful − harmless one none; on the committed one (trained with refusals of private questions about people)
   Eq. 3's never refuses a profile question and the harmful − harmless one does (README, "Use on your own model").
2. Forget and retain given as facts (:class:`erasekit.forms.Fact`) are rendered in the SAME form families
   (``forms=``, default all of :data:`erasekit.forms.FAMILIES`), so the gate contrasts people, not phrasings; the
   tune set is then every fourth retain SUBJECT with all its facts. Prompts given as strings are used as they are.
3. H_f = the forget prompts' activations, H_r = the retain prompts'; at the last prompt token, or with facts
   (``read_at="auto"``) at the subject's last token, where a fitted :class:`erasekit.locate.Locator` also finds it
   at inference (a portrait's subject: the last image token).
4. erasekit's contrastive gate with γ, layers and floors chosen by :func:`erasekit.tuning.choose_gate` on the
   ``tune`` prompts, its held-out AUC computed one form family at a time when the prompts come in several families
   (a rule that prefers what transfers to a form the gate never saw). ``gate="paper"``: MLLMEraser's gate instead.
5. λ: a number, or ``"auto"``: on the forget prompts and the tune prompts, the smallest λ of ``strength_grid``
   that reaches the highest forget refusal rate among those keeping the tune prompts' refusal rate within
   ``max_retain_refusal`` of the vanilla model's (no λ qualifies: the smallest λ). By default
   (``strength_rule="fast"``, :func:`fast_refusal_strength`) only the answers that decide this choice are
   generated (no answer where no gate opens, a row stops at its first refusal phrase, a λ drops out once it
   cannot win); ``strength_rule="generate"`` answers every prompt at every λ: the same λ, slower by the ratio
   ``benchmarks/bench_front_door.py`` measures (its ``results/front_door_cpu.json``).

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
from .directions import ErasureDirection, diff_in_means
from .forms import FAMILIES, Fact, render, split_subjects
from .generation import generate, prefill_gate_values
from .hooks import check_layers, collect_activations, steer
from .scoring import is_refusal
from .steering import InputAwareSteerer, fit_steerer
from .tuning import GAMMA_GRID, LAYER_AUC_MARGIN, choose_gate
from .world import make_world, safety_prompts

__all__ = ["Eraser", "fit_eraser", "default_refusal_prompts", "STRENGTH_GRID", "GATES", "STRENGTH_RULES",
           "fast_refusal_strength"]

STRENGTH_GRID = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
READS = ("frozen", "steered", "anchor")
# How strength="auto" gets its refusal rates: "fast" (:func:`fast_refusal_strength`: only the answers that decide
# the choice) or "generate" (every forget and tune answer at every λ; the same choice, measured slower).
STRENGTH_RULES = ("fast", "generate")
# "default": erasekit's contrastive gate (rules of :func:`erasekit.tuning.choose_gate`, frozen reading); "paper":
# MLLMEraser's null-space gate as the authors run it (absolute gamma 0.1, null-space ratio 0.3, every layer 1..L-1,
# each gate reading its own steered state), the reproduced reference.
GATES = ("default", "paper")
PAPER_GATE = {"gamma": 0.1, "null_space": 0.3}


def _facts(items: Sequence[Any]) -> bool:
    """True when ``items`` are :class:`erasekit.forms.Fact` (all of them); a mix of facts and prompts is an error."""
    kinds = {isinstance(x, Fact) for x in items} if not isinstance(items, str) else {False}
    if kinds == {True, False}:
        raise TypeError("give facts (erasekit.forms.Fact) or prompts, not a mix of both")
    return kinds == {True}


def _split(prompts: Sequence[Any], what: str) -> tuple[list[str], list[Any] | None]:
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
    """(harmful, harmless) training requests of erasekit's safety set (:func:`erasekit.world.safety_prompts` over a
    small synthetic world; the first ``n`` of each): the default ``refuse`` / ``comply`` prompts of
    :func:`fit_eraser`. ``comply="jailbreak"``: the harmful requests wrapped in a jailbreak instead (Eq. 3's
    contrast)."""
    if comply not in ("harmless", "jailbreak"):
        raise ValueError(f"comply must be 'harmless' or 'jailbreak', got {comply!r}")
    sp = [s for s in safety_prompts(make_world(20, 1, seed=0)) if not s.heldout]
    harmful = [s.prompt for s in sp if s.kind == "harmful"][:n]
    other = [s.prompt for s in sp if s.kind == comply][:n]
    return harmful, other


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

    def context(self, adapter: Any, record: dict | None = None):
        """The steering context: inside it every forward pass / generate call of ``adapter`` is steered."""
        ops = self.steerer.operators(self.strength)
        check_layers(adapter, list(ops))
        return steer(adapter, ops, mode="prefill", read=self.read,
                     anchor=min(ops) if self.read == "anchor" else None, record=record)

    def generate(self, adapter: Any, prompts: Sequence[Any], *, max_new_tokens: int = 64, batch_size: int = 16,
                 progress: bool = True) -> list[str]:
        """Greedy answers to ``prompts`` (strings or (text, image) pairs) with the erasure on."""
        texts, images = _split(prompts, "prompts")
        return generate(adapter, texts, images, context=lambda: self.context(adapter), max_new_tokens=max_new_tokens,
                        batch_size=batch_size, progress=progress, desc="generate (erased)")

    def gate_values(self, adapter: Any, prompts: Sequence[Any], batch_size: int = 16) -> dict[int, Tensor]:
        """The raw gate value per steered layer for each prompt (one prefill each): ``{layer: (N,)}``.
        Above the layer's floor the push is on; a forget prompt should read high, a retain prompt low."""
        texts, images = _split(prompts, "prompts")
        return prefill_gate_values(adapter, texts, images, lambda rec: self.context(adapter, record=rec), batch_size)

    def save(self, path: str | os.PathLike, model_id: str = "") -> None:
        """Write the eraser as an artifact (``path.safetensors`` + ``path.json``), atomically."""
        save_artifact(path, self.steerer, model_id=model_id or str(self.steerer.meta.get("model_id", "")),
                      hyperparameters={"eraser": {"strength": float(self.strength), "read": self.read}})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Eraser":
        """Read an eraser written by :meth:`save`."""
        hyper = read_sidecar(path).get("hyperparameters", {})
        if "eraser" not in hyper:
            raise ValueError(f"{path} is an erasekit artifact but not an eraser (no 'eraser' hyperparameters); "
                             "load a steerer with erasekit.load_artifact instead")
        steerer = load_artifact(path)
        return cls(steerer, float(hyper["eraser"]["strength"]), hyper["eraser"]["read"])


def refusal_strength(scores: Sequence[Sequence[float]], base: float, max_retain_refusal: float) -> dict:
    """The refusal rule for λ: ``scores`` are ``(λ, forget refusal rate, tune refusal rate)``; the smallest λ with the
    highest forget refusal rate among those whose tune refusal rate is within ``max_retain_refusal`` of ``base`` (the
    vanilla model's), else the smallest λ. Returns ``{"rule", "scores", "chosen"}``."""
    ok = [s for s in scores if s[2] <= base + max_retain_refusal]
    lam = min(ok, key=lambda s: (-s[1], s[0]))[0] if ok else min(s[0] for s in scores)
    return {"rule": f"smallest λ with the highest forget refusal rate among those with tune refusal <= vanilla "
                    f"({base:.3f}) + {max_retain_refusal}", "scores": [list(map(float, s)) for s in scores],
            "chosen": float(lam)}


# ----------------------------------------------------------------------------------------------------------------
# The λ rule without generating every answer at every λ (strength_rule="fast")


class _Stop(Exception):
    """Ends a forward pass once the gates have been read."""


def _pad_left(batch: dict, T: int, pad_id: int) -> dict:
    """Left-pad an encoded batch's per-token tensors to length ``T`` (the padded length of the prompts' batch in
    the generating route): pads are masked, so every row sees exactly the positions it saw there."""
    ids = batch["input_ids"]
    extra = T - ids.shape[1]
    if extra <= 0:
        return batch
    import torch

    out = dict(batch)
    for k in ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids"):
        v = batch.get(k)
        if isinstance(v, Tensor) and v.ndim == 2 and v.shape == ids.shape:
            fill = pad_id if k == "input_ids" else 0
            out[k] = torch.cat([v.new_full((v.shape[0], extra), fill), v], dim=1)
    return out


def _frozen_gates(adapter, ops: dict, batch: dict) -> dict[int, Tensor]:
    """The gate values ``{layer: (B,)}`` that ``steer(mode="prefill", read="frozen")`` applies on this batch: the
    same unsteered pass (inside ``generate``, with the prefill's kwargs, no KV cache) and the same reading, stopped
    after the last steered layer."""
    import torch

    from .hooks import _get_hidden, registered

    layer_ids = sorted(ops)
    state: dict = {"inner": False, "mask": None, "gates": {}}

    def layer_hook(l):
        def hook(module, args, kwargs):
            if not state["inner"]:
                return None
            h = _get_hidden(args, kwargs)
            op, loc = ops[l], getattr(ops[l], "locator", None)
            mask = state["mask"]
            if mask is not None and mask.shape != h.shape[:2]:
                mask = None
            state["gates"][l] = op.gate_value(h[:, -1, :] if loc is None else loc.read(h, mask))
            if l == layer_ids[-1]:
                raise _Stop
            return None
        return hook

    def model_hook(module, args, kwargs):
        if state["inner"]:
            return None
        mask = kwargs.get("attention_mask")
        state["mask"] = mask if isinstance(mask, Tensor) and mask.ndim == 2 and mask.shape[1] > 1 else None
        inner = {**kwargs, "use_cache": False}
        for name in ("past_key_values", "cache"):
            if name in inner:
                inner[name] = None
        state["inner"] = True
        with torch.no_grad():
            module(*args, **inner)
        return None

    def handles():
        yield adapter.model.register_forward_pre_hook(model_hook, with_kwargs=True)
        for l in layer_ids:
            yield adapter.layers[l].register_forward_pre_hook(layer_hook(l), with_kwargs=True)

    try:
        with registered(handles), torch.no_grad():
            adapter.generate(batch, max_new_tokens=1)
    except _Stop:
        pass
    return state["gates"]


def _pushed(adapter, ops: dict, gates: dict[int, Tensor], lam: Tensor):
    """``steer(mode="prefill", read="frozen")`` with the gate values given (one row each) and a strength per row:
    on a prefill pass each steered layer adds ``push(λ_row · s_row)`` (with ``ops`` at strength 1 this is the same
    float product ``λ s d`` as the operator at strength λ); decode steps are left to the KV cache."""
    from .hooks import _get_hidden, _set_hidden, registered

    def hook_for(l):
        s = lam.to(device=gates[l].device, dtype=gates[l].dtype) * gates[l]

        def hook(module, args, kwargs):
            h = _get_hidden(args, kwargs)
            if h.shape[1] <= 1:
                return None
            delta = ops[l].push(s.to(h.device), h).unsqueeze(1)
            return _set_hidden(args, kwargs, h + 1.0 * delta.to(h.dtype))
        return hook

    return registered(lambda: (adapter.layers[l].register_forward_pre_hook(hook_for(l), with_kwargs=True)
                               for l in sorted(ops)))


class _RowStrength:
    """A gated operator at strength 1 whose gate is multiplied by a strength per batch row (any reading mode)."""

    def __init__(self, op, lam: Tensor):
        self.op, self.lam = op, lam
        self.locator = getattr(op, "locator", None)
        self.gate_range = getattr(op, "gate_range", None)

    def raw_gate(self, h):
        return self.op.raw_gate(h)

    def gate_value(self, h):
        s = self.op.gate_value(h)
        return self.lam.to(device=s.device, dtype=s.dtype) * s

    def push(self, s, like):
        return self.op.push(s, like)

    def __call__(self, h):
        if hasattr(self.op, "push"):
            return self.push(self.gate_value(h), h)
        out = self.op(h)
        return out * self.lam.to(device=out.device, dtype=out.dtype).view(-1, *([1] * (out.ndim - 1)))


def _refusal_stop(tokenizer, start: int):
    """Stop a row once its answer so far contains a refusal phrase: :func:`is_refusal` matches a phrase anywhere
    in the normalised text, and a phrase present in a prefix of the tokens stays in the full answer."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class RefusalStop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            texts = tokenizer.batch_decode(input_ids[:, start:], skip_special_tokens=True)
            return torch.tensor([is_refusal(t) for t in texts], dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([RefusalStop()])


class _RulePrompts:
    """One prompt set of the λ rule, in the generating route's batches: each batch's padded length, its rows'
    gate values (frozen reading) and which rows have every gate at 0 (no push at any λ: the vanilla answer)."""

    def __init__(self, adapter, texts, images, batch_size: int, ops: dict | None):
        import torch

        self.texts, self.images = list(texts), images
        self.chunks, self.T, self.gates, self.open = [], [], [], []
        for s in range(0, len(self.texts), batch_size):
            idx = list(range(s, min(s + batch_size, len(self.texts))))
            batch = adapter.encode(self.texts[s:s + batch_size], images=self._ims(idx))
            self.chunks.append(idx)
            self.T.append(int(batch["input_ids"].shape[1]))
            if ops is None:  # gates read per λ (steered / anchor reading): every row is pushed
                self.gates.append(None)
                self.open.append(idx)
                continue
            g = _frozen_gates(adapter, ops, batch)
            self.gates.append(g)
            closed = torch.stack([g[l] == 0 for l in sorted(g)]).all(0).tolist()
            self.open.append([i for i, c in zip(idx, closed) if not c])
        self.n_open = sum(map(len, self.open))
        self.closed = [i for c, o in zip(self.chunks, self.open) for i in c if i not in set(o)]

    def _ims(self, idx):
        if self.images is None:
            return None
        ims = [self.images[i] for i in idx]
        return None if all(im is None for im in ims) else ims

    def refused(self, adapter, k: int, rows: list[int], lams: list[float], steerer, read: str, ops: dict | None,
                max_new_tokens: int, stop: bool = True) -> list[bool]:
        """Whether each (row, λ) of batch ``k`` is refused (λ = 0: the vanilla model), generated in one batch
        padded to the generating route's length."""
        import contextlib

        import torch

        if not rows:
            return []
        batch = _pad_left(adapter.encode([self.texts[i] for i in rows], images=self._ims(rows)), self.T[k],
                          adapter.pad_token_id)
        lam = torch.tensor(lams, dtype=torch.float32)
        if ops is not None:
            pos = {i: j for j, i in enumerate(self.chunks[k])}
            sel = torch.tensor([pos[i] for i in rows])
            ctx = _pushed(adapter, ops, {l: v[sel] for l, v in self.gates[k].items()}, lam)
        elif any(lams):
            ops1 = steerer.operators(1.0)
            ctx = steer(adapter, {l: _RowStrength(o, lam) for l, o in ops1.items()}, mode="prefill", read=read,
                        anchor=min(ops1) if read == "anchor" else None)
        else:
            ctx = contextlib.nullcontext()
        kw = {"stopping_criteria": _refusal_stop(adapter.tokenizer, self.T[k])} if stop else {}
        with ctx, torch.no_grad():
            answers = adapter.generate(batch, max_new_tokens=max_new_tokens, **kw)
        return [is_refusal(a) for a in answers]


def _tune_ok(a: tuple[int, int], b: tuple[int, int], c: tuple[int, int], n: int, tol: float) -> bool | None:
    """:func:`refusal_strength`'s test ``tune rate <= vanilla rate + tol`` in its float arithmetic, decided over
    every count still possible: ``a`` vanilla refusals of the tune rows no gate opens on (the same at every λ),
    ``b`` vanilla refusals of the others, ``c`` their refusals at λ, each a (low, high) range. None: undecided."""
    import numpy as np

    A = np.arange(a[0], a[1] + 1, dtype=np.float64)
    if bool(np.all((A + c[1]) / n <= (A + b[0]) / n + tol)):
        return True
    if not bool(np.any((A + c[0]) / n <= (A + b[1]) / n + tol)):
        return False
    return None


def fast_refusal_strength(adapter, steerer: InputAwareSteerer, read: str, forget: tuple, tune: tuple,
                          strength_grid: Sequence[float], max_retain_refusal: float, max_new_tokens: int,
                          batch_size: int) -> dict:
    """:func:`refusal_strength`'s choice of λ, computed from as few answers as decide it.

    The generating route answers every forget and tune prompt at every λ (and the tune prompts unsteered) and
    applies the rule to the refusal rates. This route gets the same choice from fewer answers:

    1. Rows no gate opens on. With the frozen reading a prompt's gates do not depend on λ; a row whose floored
       gate is exactly 0 at every steered layer gets a zero push, so its answer at every λ is the vanilla answer.
       Forget such rows add the same count at every λ, which changes no comparison of forget rates: they are never
       generated. Tune such rows add the same count to the vanilla and every steered tune rate; only when the
       float test of the rule could go either way for some possible count are they generated (unsteered).
    2. Early stops. A row stops generating once its answer so far holds a refusal phrase (:func:`is_refusal`
       looks for phrases anywhere, and a phrase in a prefix stays in the whole answer).
    3. Bounds. Each λ keeps the range of forget refusal counts still possible (refusals found, plus the rows
       not answered yet) and a tune test that is passed, failed or still open (:func:`_tune_ok`: decided once
       every count still possible gives the same float result). A λ drops out when its test fails, or when a λ
       that passes it refuses more forget prompts than the λ still can (or as many, being smaller): it cannot
       be the rule's choice. Work goes where it decides most: one batch of forget prompts at every λ, then the
       λ refusing most so far (its tune test, then all its forget prompts), then the others, a few prompts at a
       time, until they drop out. The λ left is the rule's choice; none left (every tune test failed): the
       smallest λ, as the rule says.

    Every answer it does generate is the generating route's answer: the same prompts in the same batches, padded
    to the same length, greedy, with the push of the same float products λ·s·d (a strength per row times the
    gate values read on the same unsteered pass); the other rows of a batch (other λ, other prompts) do not enter
    a row's arithmetic, which ``tests/test_eraser_fast_lambda.py`` checks answer by answer. Other gate readings
    (``"steered"``: MLLMEraser's gate) read the gates per λ: every row is open, steps 2 and 3 still apply.
    Returns :func:`refusal_strength`'s dict (``scores`` holds what was measured: the open rows' counts).
    """
    from .steering import GatedOperator

    lams = sorted({float(x) for x in strength_grid})
    if not lams:
        raise ValueError("strength_grid is empty")
    ops1 = steerer.operators(1.0)
    frozen = read == "frozen" and all(isinstance(o, GatedOperator) for o in ops1.values())
    ops = ops1 if frozen else None
    F = _RulePrompts(adapter, forget[0], forget[1], batch_size, ops)
    T = _RulePrompts(adapter, tune[0], tune[1], batch_size, ops)
    n = max(len(T.texts), 1)
    tol = float(max_retain_refusal)
    gen = dict(steerer=steerer, read=read, ops=ops, max_new_tokens=max_new_tokens)
    fdec: dict[float, dict[int, bool]] = {l: {} for l in lams}  # forget answers so far: row -> refused
    tc = {l: [0, T.n_open] for l in lams}  # range of tune refusals among the open rows
    tk = {l: 0 for l in lams}              # next tune batch
    van: dict[int, int] = {}               # tune batch -> vanilla refusals among its open rows
    a = (0, len(T.closed))                 # range of vanilla refusals among the closed tune rows
    ok: dict[float, bool | None] = {l: None for l in lams}
    alive = list(lams)
    n_rows = 0
    chunk_of = {i: k for k, rows in enumerate(F.open) for i in rows}
    step = max(1, batch_size // 4)

    def fr(l):  # forget refusals among the open rows answered so far
        return sum(fdec[l].values())

    def fu(l):  # open forget rows not answered yet
        return F.n_open - len(fdec[l])

    def forget_step(group: list[float], k: int, rows: list[int]) -> None:
        """``rows`` (open forget rows of batch ``k``) answered at every λ of ``group``, in one batch."""
        nonlocal n_rows
        jobs = [(i, l) for l in group for i in rows]
        out = F.refused(adapter, k, [i for i, _ in jobs], [l for _, l in jobs], **gen)
        n_rows += len(jobs)
        for (i, l), o in zip(jobs, out):
            fdec[l][i] = o

    def tune_step(l: float) -> None:
        nonlocal n_rows
        k = tk[l]
        rows = T.open[k]
        jobs = [(i, l) for i in rows] + ([(i, 0.0) for i in rows] if k not in van else [])
        out = T.refused(adapter, k, [i for i, _ in jobs], [m for _, m in jobs], **gen)
        n_rows += len(jobs)
        r = sum(out[:len(rows)])
        tc[l] = [tc[l][0] + r, tc[l][1] - (len(rows) - r)]
        if k not in van:
            van[k] = sum(out[len(rows):])
        tk[l] += 1

    def next_rows(l: float, lead: float) -> tuple[int, tuple[int, ...]]:
        """The next few forget rows to answer at λ (not the leader): first those the leader did not refuse (the
        likeliest to be refused at λ neither, which is what puts λ out), within one batch of prompts."""
        todo = sorted((i for i in chunk_of if i not in fdec[l]),
                      key=lambda i: (fdec[lead].get(i, True), chunk_of[i], i))
        k = chunk_of[todo[0]]
        return k, tuple([i for i in todo if chunk_of[i] == k][:step])

    if F.n_open:  # a first look at every λ: which one leads
        k0 = next(k for k, rows in enumerate(F.open) if rows)
        forget_step(list(lams), k0, F.open[k0])
    while True:
        known = sum(van.values())
        b = (known, known + T.n_open - sum(len(T.open[k]) for k in van))
        for l in alive:
            if ok[l] is None:
                ok[l] = _tune_ok(a, b, tuple(tc[l]), n, tol)
        passing = [l for l in alive if ok[l]]
        alive = [l for l in alive if ok[l] is not False and not any(
            fr(m) > fr(l) + fu(l) or (fr(m) == fr(l) + fu(l) and m < l) for m in passing if m != l)]
        if not alive or (len(alive) == 1 and ok[alive[0]]):
            break
        # the likely winner first (highest forget refusal rate so far): its tune test, then all its forget rows;
        # then the others, each only until it is out
        lead = max(alive, key=lambda l: (fr(l) / max(len(fdec[l]), 1), -l))
        if ok[lead] is None and tk[lead] < len(T.chunks):
            tune_step(lead)
        elif fu(lead) > 0:
            k = next(k for k, rows in enumerate(F.open) if any(i not in fdec[lead] for i in rows))
            forget_step([lead], k, [i for i in F.open[k] if i not in fdec[lead]])
        elif any(fu(l) > 0 for l in alive):
            nxt = {l: next_rows(l, lead) for l in alive if fu(l) > 0}
            k, rows = nxt[min(nxt)]
            forget_step([l for l in nxt if nxt[l] == (k, rows)], k, list(rows))
        elif any(ok[l] is None and tk[l] < len(T.chunks) for l in alive):
            tune_step(next(l for l in alive if ok[l] is None and tk[l] < len(T.chunks)))
        elif a[0] != a[1]:  # the float test hinges on the rows no gate opens on: answer them (unsteered)
            r = 0
            for k, idx in enumerate(T.chunks):
                rows = [i for i in idx if i not in set(T.open[k])]
                r += sum(T.refused(adapter, k, rows, [0.0] * len(rows), **gen))
                n_rows += len(rows)
            a = (r, r)
        else:  # pragma: no cover
            raise RuntimeError("the fast λ rule ran out of answers before deciding (a bug)")
    chosen = alive[0] if alive else lams[0]
    return {"rule": f"smallest λ with the highest forget refusal rate among those with tune refusal <= vanilla "
                    f"+ {max_retain_refusal} (fast route: only the answers that decide it)",
            "route": "fast", "chosen": float(chosen), "rows_generated": n_rows,
            "n_open_forget": F.n_open, "n_open_tune": T.n_open, "n_forget": len(F.texts), "n_tune": len(T.texts),
            "scores": [[l, fr(l), fr(l) + fu(l), tc[l][0], tc[l][1], ok[l]] for l in lams],
            "scores_columns": ["λ", "open forget refused (at least)", "(at most)", "open tune refused (at least)",
                               "(at most)", "tune test passed"]}


def _subject_states(adapter, forget, retain, tune, subjects: dict, layers, batch_size: int,
                    generic: Sequence[str] = ()):
    """H_f, H_r at the subject's last token of each prompt; the per-layer locators fitted on every position of the
    forget and retain prompts; H_t at the tune prompts' LOCATED positions (what the gate will read there).

    ``generic``: prompts about no one (e.g. harmless requests). Even-numbered ones join the locator's negatives
    (every position 0) and H_r at their located position, odd-numbered ones H_t at theirs: a prompt without a
    subject is read wherever the locator points, and the gate and its floors must see such readings.
    Returns (H_f, H_r, H_t, locators, rows of generic prompts appended to H_r, appended to H_t)."""
    import torch

    from .locate import fit_locator, subject_index, token_states

    def states(txt, im):
        H, off = token_states(adapter, txt, im, layers, batch_size)
        ends = [off[i + 1] - 1 - subject_index(adapter, t, subjects.get((t, im is not None and im[i] is not None),
                                                                       ""), im is not None and im[i] is not None)
                for i, t in enumerate(txt)]
        return H, off, ends

    (Hf, of, ef), (Hr, orr, er) = states(*forget), states(*retain)
    Ht, ot, _ = states(*tune)
    g_fit, g_tune = list(generic[0::2]), list(generic[1::2])
    Hg, og = token_states(adapter, g_fit, None, layers, batch_size) if g_fit else ({}, [0])
    Hgt, ogt = token_states(adapter, g_tune, None, layers, batch_size) if g_tune else ({}, [0])

    def located(H, off, loc, l):
        return [H[l][off[i]:off[i + 1]][int(loc.scores(H[l][off[i]:off[i + 1]]).argmax())]
                for i in range(len(off) - 1)]

    locators, H_f, H_r, H_t = {}, {}, {}, {}
    for l in layers:
        parts = [Hf[l], Hr[l]] + ([Hg[l]] if g_fit else [])
        X = torch.cat(parts)
        y = torch.zeros(X.shape[0], dtype=torch.bool)
        y[torch.tensor(ef)] = True
        y[Hf[l].shape[0] + torch.tensor(er)] = True
        loc = fit_locator(X, y)
        H_f[l] = Hf[l][torch.tensor(ef)]
        H_r[l] = torch.stack([*Hr[l][torch.tensor(er)], *(located(Hg, og, loc, l) if g_fit else [])])
        H_t[l] = torch.stack(located(Ht, ot, loc, l) + (located(Hgt, ogt, loc, l) if g_tune else []))
        locators[l] = loc
    return H_f, H_r, H_t, locators, len(g_fit), len(g_tune)


def _sample(texts: list[str], images: list | None, n: int | None) -> tuple[list[str], list | None]:
    """At most ``n`` of the prompts, evenly spread over the list (deterministic); all when ``n`` is None."""
    if n is None or len(texts) <= n:
        return texts, images
    idx = [round(i * (len(texts) - 1) / (n - 1)) for i in range(n)] if n > 1 else [0]
    return [texts[i] for i in idx], None if images is None else [images[i] for i in idx]


def _refusal_rate(answers: Sequence[str]) -> float:
    return sum(map(is_refusal, answers)) / max(len(answers), 1)


def fit_eraser(adapter: Any, forget: Sequence[Any], retain: Sequence[Any], *, tune: Sequence[Any] | None = None,
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
        tune: held-out retain prompts (or facts) for the rules (default: every fourth retain prompt; with retain
            facts, every fourth retain SUBJECT with all its facts, :func:`erasekit.forms.split_subjects`; then not
            in H_r).
        forms: the form families facts are rendered in (default: all built-in ones).
        gate: ``"default"`` (erasekit's gate) or ``"paper"`` (MLLMEraser's null-space gate, :data:`PAPER_GATE`,
            every candidate layer, steered reading); λ by the same rule for both.
        read_at: where erasekit's gate reads a prompt: ``"last"`` (its last token, the paper's rule), ``"subject"``
            (a fitted :class:`erasekit.locate.Locator` finds the subject's last token; needs facts: their subjects
            mark the positions it learns), ``"auto"``: ``"subject"`` when forget and retain are facts, else
            ``"last"``. The paper gate always reads the last token.
        strength_rule: how ``strength="auto"`` gets the refusal rates: ``"fast"`` (default,
            :func:`fast_refusal_strength`: the same λ from only the answers that decide it) or ``"generate"``
            (every forget and tune answer at every λ of the grid, and the tune answers unsteered).
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
    if read_at == "auto":
        read_at = "subject" if gate == "default" and _facts(forget) and _facts(retain) else "last"
    if read_at == "subject" and not (_facts(forget) and _facts(retain) and (tune is None or _facts(tune))):
        raise ValueError("read_at='subject' needs forget, retain (and tune) given as erasekit.forms.Fact: the "
                         "subjects mark the tokens the locator learns")
    if read_at == "subject" and gate == "paper":
        raise ValueError("the paper gate reads the last token; use gate='default' with read_at='subject'")
    fact_meta, subjects, families = {}, {}, {}
    if _facts(forget) or _facts(retain) or (tune is not None and _facts(tune)):
        if not forms:
            raise ValueError("forms is empty: name at least one family of erasekit.forms.FAMILIES")
        pool = [x for x in (*forget, *retain, *(tune or ())) if isinstance(x, Fact)]
        if tune is None and _facts(retain):
            retain, tune = split_subjects(retain)
            if not retain or not tune:
                raise ValueError("retain facts need at least 2 subjects (every fourth subject tunes the rules)")
        fact_meta = {"forms": list(forms), "n_forget_facts": len(forget) if _facts(forget) else None}

        def as_prompts(items):
            if not _facts(items):
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
    f_txt, f_im = _split(forget, "forget")
    r_txt, r_im = _split(retain, "retain")
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
        t_txt, t_im = _split(tune, "tune")
    layers = list(range(1, adapter.num_layers)) if layers is None else check_layers(adapter, layers)
    kw = dict(layers=layers, batch_size=batch_size, progress=progress)
    if direction is None:
        d_refuse, d_comply = default_refusal_prompts()
        pos_t, pos_i = _split(refuse if refuse is not None else d_refuse, "refuse")
        neg_t, neg_i = _split(comply if comply is not None else d_comply, "comply")
        direction = diff_in_means(collect_activations(adapter, pos_t, pos_i, **kw),
                                  collect_activations(adapter, neg_t, neg_i, **kw),
                                  meta={"kind": "refuse_minus_comply", "n_refuse": len(pos_t), "n_comply": len(neg_t)})
    locators = {}
    if read_at == "subject":
        generic = list(comply if comply is not None else default_refusal_prompts()[1])
        generic = [g for g in generic if isinstance(g, str)]
        H_f, H_r, H_t, locators, n_gr, n_gt = _subject_states(adapter, (f_txt, f_im), (r_txt, r_im),
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
    steerer.meta.update(model_id=str(getattr(adapter, "model_id", "")), n_forget=len(f_txt), n_retain=len(r_txt),
                        n_tune=len(t_txt), **fact_meta)
    read = "steered" if gate == "paper" else "frozen"
    if strength != "auto":
        return Eraser(steerer, float(strength), read)
    (f_txt, f_im), (t_txt, t_im) = _sample(f_txt, f_im, rule_prompts), _sample(t_txt, t_im, rule_prompts)
    steerer.meta["strength_rule"] = _strength_rule(adapter, steerer, read, (f_txt, f_im), (t_txt, t_im),
                                                   strength_grid=strength_grid, max_retain_refusal=max_retain_refusal,
                                                   max_new_tokens=max_new_tokens, batch_size=batch_size,
                                                   route=strength_rule)
    return Eraser(steerer, steerer.meta["strength_rule"]["chosen"], read)


def _strength_rule(adapter: Any, steerer: InputAwareSteerer, read: str, forget: tuple, tune: tuple, *,
                   strength_grid: Sequence[float], max_retain_refusal: float, max_new_tokens: int, batch_size: int,
                   route: str = "fast") -> dict:
    """λ by the refusal rule on the (sampled) forget and tune prompts ``(texts, images)``, by either route
    (:data:`STRENGTH_RULES`); :func:`refusal_strength`'s dict with ``route`` and ``seconds`` added."""
    import time

    t0 = time.perf_counter()
    if route == "fast":
        out = fast_refusal_strength(adapter, steerer, read, forget, tune, strength_grid, max_retain_refusal,
                                    max_new_tokens, batch_size)
    elif route == "generate":
        (f_txt, f_im), (t_txt, t_im) = forget, tune
        g_kw = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, progress=False)
        base = _refusal_rate(generate(adapter, t_txt, t_im, **g_kw))
        scores = []
        for lam in sorted(strength_grid):
            er = Eraser(steerer, float(lam), read)
            ctx = lambda er=er: er.context(adapter)
            scores.append((lam, _refusal_rate(generate(adapter, f_txt, f_im, context=ctx, **g_kw)),
                           _refusal_rate(generate(adapter, t_txt, t_im, context=ctx, **g_kw))))
        out = {**refusal_strength(scores, base, max_retain_refusal), "route": "generate"}
    else:
        raise ValueError(f"strength_rule must be one of {STRENGTH_RULES}, got {route!r}")
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out
