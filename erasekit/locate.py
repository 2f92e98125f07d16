"""Read the gate at the subject, not at the last token.

Why (measured by ``scripts/gate_positions.py`` into ``data/results/gate_positions.json``, shown in chapter 09): in
a form no fit saw, forget and held-out retain people separate better at the last token of the subject's name than
at the prompt's last token, where the form dominates; a rank-one gate read at every position and max-pooled does
not recover it (other positions fire). What does: a second linear probe, the :class:`Locator`, that scores "this is
the last token of the subject" at every position; the gate reads the state at the best-scoring position of each
prompt. A subject shown only in an image is read at the last image token.

:func:`subject_index` finds that token in a prompt (from the subject's text, for fitting); :func:`token_states`
collects every position's state with per-prompt offsets; :func:`fit_locator` fits the probe (ridge regression on
the fit prompts' positions, subject-end tokens 1, every other real token 0). :func:`erasekit.hooks.steer` reads a
gated operator at its locator's position when it carries one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["Locator", "fit_locator", "subject_index", "token_states", "subject_states"]


@dataclasses.dataclass
class Locator:
    """``score(h) = (h - mean) . weight`` per position; the read position of a prompt is its argmax over real
    tokens."""

    weight: Tensor
    mean: Tensor
    meta: dict = dataclasses.field(default_factory=dict)

    def scores(self, h: Tensor) -> Tensor:
        """(..., d) -> (...,) in float32 or better."""
        cdt = torch.float64 if h.dtype == torch.float64 else torch.float32
        return (h.to(cdt) - self.mean.to(h.device, cdt)) @ self.weight.to(h.device, cdt)

    def position(self, h: Tensor, mask: Tensor | None = None) -> Tensor:
        """The read position of each row of ``h`` (B, T, d); ``mask`` (B, T): 1 on real tokens (pads never win)."""
        s = self.scores(h)
        if mask is not None:
            s = s.masked_fill(~mask.to(s.device).bool(), float("-inf"))
        return s.argmax(dim=-1)

    def read(self, h: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, T, d) -> (B, d): each row's state at its read position."""
        pos = self.position(h, mask)
        return h[torch.arange(h.shape[0], device=h.device), pos.to(h.device)]

    def to(self, *args, **kwargs) -> Locator:
        return Locator(self.weight.to(*args, **kwargs), self.mean.to(*args, **kwargs), dict(self.meta))

    def tensors(self) -> dict[str, Tensor]:
        return {"weight": self.weight, "mean": self.mean}


def fit_locator(H: Tensor, is_subject: Tensor, ridge: float = 1e-3) -> Locator:
    """Ridge regression of ``is_subject`` (N,) on the states ``H`` (N, d), centred; ``ridge`` relative to the mean
    eigenvalue of the covariance."""
    if H.ndim != 2 or is_subject.shape != (H.shape[0],):
        raise ValueError(f"H must be (N, d) and is_subject (N,), got {tuple(H.shape)} and {tuple(is_subject.shape)}")
    if not bool(is_subject.any()) or bool(is_subject.all()):
        raise ValueError("is_subject needs both subject and other positions")
    X = H.double()
    mu = X.mean(0)
    Xc = X - mu
    A = Xc.T @ Xc
    A += ridge * A.trace() / A.shape[0] * torch.eye(A.shape[0], dtype=A.dtype)
    y = is_subject.double()
    w = torch.linalg.solve(A, Xc.T @ (y - y.mean()))
    return Locator(w.float(), mu.float(), {"n": int(H.shape[0]), "n_subject": int(is_subject.sum()), "ridge": ridge})


def subject_index(adapter: Any, text: str, subject: str, has_image: bool = False) -> int:
    """Index, counted from the END of the encoded prompt (0 = its last token), of the last token of the last
    occurrence of ``subject`` in ``text``; the prompt's last token (0) when the subject is absent.

    Counted from the end so that image placeholders expanded before the text do not matter.
    """
    full = adapter.build_prompts([text], [has_image])[0]
    at = full.rfind(subject) if subject else -1
    if at < 0:
        return 0
    end = at + len(subject)
    # Tokenise the prompt up to the subject's end: a prefix of the whole prompt's tokens when the subject ends at a
    # token boundary (tokenising the tail alone would not do: "?" alone gets a leading-space token).
    ids, pre = adapter._tokenize(full), adapter._tokenize(full[:end])
    if ids[:len(pre)] == pre:
        return len(ids) - len(pre)
    return len(adapter.tokenizer(full[end:], add_special_tokens=False)["input_ids"])  # no boundary: best effort


def token_states(adapter: Any, texts: Sequence[str], images: Sequence[Any] | None, layers: Sequence[int],
                 batch_size: int = 16) -> tuple[dict[int, Tensor], list[int]]:
    """Every real token's state at ``layers`` (``{layer: (sum of lengths, d)}``, prompts in order) and the
    offsets (len N+1) of each prompt's rows."""
    from .hooks import collect_activations

    H = collect_activations(adapter, list(texts), None if images is None else list(images), layers=layers,
                            position="all", batch_size=batch_size, progress=False)
    lengths = []
    for i in range(0, len(texts), batch_size):
        ims = None if images is None else list(images[i:i + batch_size])
        lengths += adapter.encode(list(texts[i:i + batch_size]), images=ims)["attention_mask"].sum(1).tolist()
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + int(n))
    n_rows = next(iter(H.values())).shape[0]
    if offsets[-1] != n_rows:
        raise RuntimeError(f"token count mismatch: {offsets[-1]} from the masks, {n_rows} states")
    return H, offsets


def subject_states(adapter, forget, retain, tune, subjects: dict, layers, batch_size: int,
                   generic: Sequence[str] = ()):
    """H_f, H_r at the subject's last token of each prompt; the per-layer locators fitted on every position of the
    forget and retain prompts; H_t at the tune prompts' LOCATED positions (what the gate will read there).

    ``generic``: prompts about no one (e.g. harmless requests). Even-numbered ones join the locator's negatives
    (every position 0) and H_r at their located position, odd-numbered ones H_t at theirs: a prompt without a
    subject is read wherever the locator points, and the gate and its floors must see such readings.
    Returns (H_f, H_r, H_t, locators, rows of generic prompts appended to H_r, appended to H_t)."""
    def states(txt, im):
        H, off = token_states(adapter, txt, im, layers, batch_size)
        ends = [off[i + 1] - 1 - subject_index(adapter, t, subjects.get((t, im is not None and im[i] is not None),
                                                                       ""), im is not None and im[i] is not None)
                for i, t in enumerate(txt)]
        return H, off, ends

    (Hf, _, ef), (Hr, _, er) = states(*forget), states(*retain)
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
