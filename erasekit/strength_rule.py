"""λ for the front door by the refusal rule (:func:`refusal_strength`), by two routes that choose the same λ:
``"generate"`` generates every forget and tune answer at every λ of the grid; ``"fast"``
(:func:`fast_refusal_strength`, the default) generates only the answers that can still change the choice.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .generation import generate
from .hooks import steer
from .scoring import is_refusal
from .steering import InputAwareSteerer

__all__ = ["STRENGTH_RULES", "refusal_strength", "refusal_rate", "fast_refusal_strength", "choose_strength"]

STRENGTH_RULES = ("fast", "generate")


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

    from .hooks import layer_input, registered, without_cache

    layer_ids = sorted(ops)
    state: dict = {"inner": False, "mask": None, "gates": {}}

    def layer_hook(l):
        def hook(module, args, kwargs):
            if not state["inner"]:
                return None
            h = layer_input(args, kwargs)
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
        inner = without_cache(kwargs)
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
    from .hooks import layer_input, registered, with_layer_input

    def hook_for(l):
        s = lam.to(device=gates[l].device, dtype=gates[l].dtype) * gates[l]

        def hook(module, args, kwargs):
            h = layer_input(args, kwargs)
            if h.shape[1] <= 1:
                return None
            delta = ops[l].push(s.to(h.device), h).unsqueeze(1)
            return with_layer_input(args, kwargs, h + 1.0 * delta.to(h.dtype))
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


def refusal_rate(answers: Sequence[str]) -> float:
    return sum(map(is_refusal, answers)) / max(len(answers), 1)


def choose_strength(adapter: Any, steerer: InputAwareSteerer, read: str, forget: tuple, tune: tuple, *,
                   strength_grid: Sequence[float], max_retain_refusal: float, max_new_tokens: int, batch_size: int,
                   route: str = "fast") -> dict:
    """λ by the refusal rule on the (sampled) forget and tune prompts ``(texts, images)``, by either route
    (:data:`STRENGTH_RULES`); :func:`refusal_strength`'s dict with ``route`` and ``seconds`` added."""

    t0 = time.perf_counter()
    if route == "fast":
        out = fast_refusal_strength(adapter, steerer, read, forget, tune, strength_grid, max_retain_refusal,
                                    max_new_tokens, batch_size)
    elif route == "generate":
        (f_txt, f_im), (t_txt, t_im) = forget, tune
        g_kw = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, progress=False)
        base = refusal_rate(generate(adapter, t_txt, t_im, **g_kw))
        scores = []
        for lam in sorted(strength_grid):
            ops = steerer.operators(float(lam))
            ctx = lambda ops=ops: steer(adapter, ops, mode="prefill", read=read,  # noqa: E731
                                        anchor=min(ops) if read == "anchor" else None)
            scores.append((lam, refusal_rate(generate(adapter, f_txt, f_im, context=ctx, **g_kw)),
                           refusal_rate(generate(adapter, t_txt, t_im, context=ctx, **g_kw))))
        out = {**refusal_strength(scores, base, max_retain_refusal), "route": "generate"}
    else:
        raise ValueError(f"strength_rule must be one of {STRENGTH_RULES}, got {route!r}")
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out
