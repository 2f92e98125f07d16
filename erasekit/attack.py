"""Visual jailbreak by L-infinity PGD in raw pixel space (paper Eq. 5-6, after Qi et al. 2024).

Eq. 5 maximises sum_{y in Y_f} log P(y | I, Q) over images I in the eps-ball around a clean image; Eq. 6 is
the sign-gradient step followed by the projection. erasekit *minimises* a loss (the mean cross-entropy over
target tokens, i.e. minus the average log-likelihood), so the step is ``x <- x - alpha * sign(grad)``.

The perturbation lives in raw [0, 1] pixel space; the model's resize / normalisation / patchify is applied
afterwards, differentiably, by the adapter (``adapter.encode(..., images=tensor)``), so that eps = 16/255
means 16 grey levels as in Qi et al. After every step the image is projected onto the eps-ball and onto
[0, 1].

Note on sign(0): the paper defines sign(0) = +1; torch.sign(0) = 0 is used here (a pixel with exactly zero
gradient does not move), which only matters for saturated pixels and is what Qi et al.'s code does.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .artifacts import Encoded, register_artifact

__all__ = ["PGDResult", "AdversarialImages", "pgd_attack", "harmful_target_loss", "target_token_loss"]


@dataclass
class PGDResult:
    """Outcome of :func:`pgd_attack`.

    Attributes:
        image: (3, H, W) float in [0, 1], detached: the image after the last step.
        loss_history: loss at each step, evaluated *before* that step's update (len == steps).
        meta: eps, alpha, steps, random_start, seed.
    """

    image: Tensor
    loss_history: list[float]
    meta: dict = field(default_factory=dict)


@dataclass
class AdversarialImages:
    """A batch of PGD images (one per harmful prompt), saved as an ``adversarial_images`` artifact
    (:mod:`erasekit.artifacts`).

    Attributes:
        images: (B, 3, H, W) float in [0, 1].
        loss_history: (B, steps) per-image loss curves, or None.
        meta: attack settings (eps, alpha, steps, ...) and whatever provenance the caller adds.
    """

    images: Tensor
    loss_history: Tensor | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(self.images.shape)}")
        if self.loss_history is not None and self.loss_history.shape[0] != self.images.shape[0]:
            raise ValueError(f"loss_history {tuple(self.loss_history.shape)} does not match "
                             f"{self.images.shape[0]} images")

    @classmethod
    def from_results(cls, results: Sequence[PGDResult], meta: dict | None = None) -> AdversarialImages:
        """Stack :class:`PGDResult` s (same image size; loss curves kept if all have the same length)."""
        if not results:
            raise ValueError("no PGD results to stack")
        images = torch.stack([r.image for r in results])
        lengths = {len(r.loss_history) for r in results}
        hist = (torch.tensor([r.loss_history for r in results], dtype=torch.float64)
                if len(lengths) == 1 else None)
        return cls(images, hist, {**results[0].meta, **(meta or {})})


def _encode_pgd_result(result: PGDResult) -> Encoded:
    return Encoded({"image": result.image, "loss_history": torch.tensor(result.loss_history, dtype=torch.float64)},
                   {"meta": result.meta})


def _decode_pgd_result(tensors: dict[str, Tensor], side: Mapping) -> PGDResult:
    return PGDResult(tensors["image"], tensors["loss_history"].tolist(), side.get("meta", {}))


def _encode_images(adv: AdversarialImages) -> Encoded:
    tensors = {"images": adv.images}
    if adv.loss_history is not None:
        tensors["loss_history"] = adv.loss_history
    return Encoded(tensors, {"meta": adv.meta})


def _decode_images(tensors: dict[str, Tensor], side: Mapping) -> AdversarialImages:
    return AdversarialImages(tensors["images"], tensors.get("loss_history"), side.get("meta", {}))


register_artifact("pgd_result", PGDResult, _encode_pgd_result, _decode_pgd_result)
register_artifact("adversarial_images", AdversarialImages, _encode_images, _decode_images)


def pgd_attack(
    loss_fn: Callable[[Tensor], Tensor],
    image: Tensor,
    eps: float | None = 16 / 255,
    alpha: float = 1 / 255,
    steps: int = 500,
    random_start: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> PGDResult:
    """Minimise ``loss_fn(x)`` over images x with ``||x - image||_inf <= eps`` and x in [0, 1] (Eq. 6).

    Args:
        loss_fn: maps pixels (3, H, W) to a scalar loss; must be differentiable in the pixels (e.g.
            :func:`harmful_target_loss`). Only the gradient w.r.t. the pixels is computed
            (``torch.autograd.grad``), so model parameters accumulate no ``.grad``.
        image: clean image (3, H, W), float in [0, 1].
        eps: L-inf radius (16/255 in the paper), or None for the unconstrained attack (only [0, 1]).
        alpha: step size (1/255).
        steps: number of sign-gradient steps.
        random_start: start from a uniform point of the eps-ball (or, with eps=None, from uniform noise in
            [0, 1], Qi et al.'s unconstrained setting) instead of the clean image.
        seed: seeds the random start (a private generator; the global RNG is untouched).
        progress: show a tqdm bar with the current loss.

    Returns:
        :class:`PGDResult`.

    Example:
        >>> target = torch.full((3, 4, 4), 0.9)
        >>> res = pgd_attack(lambda x: ((x - target) ** 2).sum(), torch.zeros(3, 4, 4), eps=0.1, steps=50,
        ...                  alpha=0.01, progress=False)
        >>> round(float(res.image.max()), 6)  # stopped at the eps-ball
        0.1
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W), got shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise ValueError(f"image must be a float tensor in [0, 1], got dtype {image.dtype}")
    if image.min() < 0 or image.max() > 1:
        raise ValueError(f"image values must lie in [0, 1], got [{float(image.min()):.3g}, {float(image.max()):.3g}]")
    if eps is not None and not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be > 0 or None (unconstrained), got {eps}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps}")

    x0 = image.detach()
    lo = hi = None
    if eps is not None:
        # The feasible box is the intersection of the eps-ball and [0, 1]; precomputed once.
        lo, hi = (x0 - eps).clamp(0, 1), (x0 + eps).clamp(0, 1)
    x = x0.clone()
    if random_start:
        g = torch.Generator().manual_seed(seed)
        noise = torch.rand(x0.shape, generator=g, dtype=torch.float64).to(device=x0.device, dtype=x0.dtype)
        x = (x0 + (2 * noise - 1) * eps) if eps is not None else noise
        x = clamp_to_box(x, lo, hi)

    history: list[float] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=int(steps), desc="PGD", leave=False)
    try:
        for step in range(int(steps)):
            x = x.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = loss_fn(x)
                if loss.ndim != 0:
                    raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
                (grad,) = torch.autograd.grad(loss, x)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"PGD step {step}: loss is {value}")
            history.append(value)
            x = clamp_to_box(x.detach() - alpha * grad.sign(), lo, hi)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}")
    finally:
        if bar is not None:
            bar.close()
    meta = {"eps": eps, "alpha": alpha, "steps": int(steps), "random_start": random_start, "seed": seed}
    return PGDResult(x.detach(), history, meta)


def clamp_to_box(x: Tensor, lo: Tensor | None, hi: Tensor | None) -> Tensor:
    if lo is None or hi is None:
        return x.clamp(0, 1)
    return torch.minimum(torch.maximum(x, lo), hi)


def target_token_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over target tokens only.

    Args:
        logits: (B, T', V) logits of the *last* T' positions of the sequence (T' = T for full logits).
        labels: (B, T) with -100 everywhere except target (answer) tokens.

    Returns:
        Scalar: mean over all target tokens in the batch of -log P(token | prefix), computed in float32
        (next-token shift: the logit at position t predicts the label at t + 1).
    """
    if logits.ndim != 3 or labels.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"expected logits (B, T', V) and labels (B, T), got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    t_keep, t = logits.shape[1], labels.shape[1]
    if t_keep > t:
        raise ValueError(f"logits cover {t_keep} positions but labels only {t}")
    labels = labels[:, t - t_keep:]
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:].to(logits.device)
    n = int((shift_labels != -100).sum())
    if n == 0:
        raise ValueError("no target tokens: every label is -100 (were answers passed to encode?)")
    ce = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                         ignore_index=-100, reduction="sum")
    return ce / n


def harmful_target_loss(
    adapter,
    prompts: str | Sequence[str],
    targets: Sequence[str],
    k: int = 8,
    generator: torch.Generator | None = None,
) -> Callable[[Tensor], Tensor]:
    """Loss for Eq. 5: mean CE of k sampled harmful targets given the image, in ONE batched forward.

    Each call samples k targets from the few-shot corpus Y_f (without replacement when k <= len(targets),
    as Qi et al.) and k prompts (uniformly, with replacement; a single prompt is simply repeated), then runs
    ``adapter.encode(prompts, images=pixels.expand(k, ...), answers=targets)`` and one forward pass.

    Args:
        adapter: a :class:`erasekit.models.ModelAdapter` (``encode`` returns model kwargs with "labels").
        prompts: the harmful instruction(s) Q paired with the image.
        targets: harmful target responses (the 66-line corpus of Qi et al.).
        k: targets per step (8).
        generator: torch.Generator for the sampling; default: a fresh one seeded with 0 (reproducible).

    Returns:
        ``loss_fn(pixels (3, H, W)) -> scalar``, the mean CE over target tokens only (computed here from
        the logits, not by the model's loss), differentiable in the pixels.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    targets = list(targets)
    if not prompts or not targets:
        raise ValueError(f"need at least one prompt and one target, got {len(prompts)} and {len(targets)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    # Only the answer positions need logits: asking for the last few (logits_to_keep) avoids a
    # k x T x V float tensor over the ~600 image+prompt positions.
    try:
        keep_ok = "logits_to_keep" in inspect.signature(adapter.model.forward).parameters
    except (TypeError, ValueError):
        keep_ok = False

    def loss_fn(pixels: Tensor) -> Tensor:
        if pixels.ndim != 3:
            raise ValueError(f"pixels must be (3, H, W), got {tuple(pixels.shape)}")
        if len(targets) >= k:
            t_idx = torch.randperm(len(targets), generator=gen)[:k].tolist()
        else:
            t_idx = torch.randint(len(targets), (k,), generator=gen).tolist()
        p_idx = torch.randint(len(prompts), (k,), generator=gen).tolist()
        batch = adapter.encode([prompts[i] for i in p_idx], images=pixels.unsqueeze(0).expand(k, -1, -1, -1),
                               answers=[targets[i] for i in t_idx])
        labels = batch.pop("labels")
        kwargs = dict(batch, use_cache=False)
        if keep_ok:
            first = int((labels != -100).any(0).nonzero().min()) if (labels != -100).any() else 0
            # + 1: the position just before the first answer token predicts it
            kwargs["logits_to_keep"] = min(labels.shape[1], labels.shape[1] - first + 1)
        logits = adapter.model(**kwargs).logits
        return target_token_loss(logits, labels)

    return loss_fn
