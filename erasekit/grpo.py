"""The GRPO objective (Shao et al., 2024; TRL's defaults): group-relative advantages, the k3 KL estimator and the
clipped surrogate. Pure tensor functions; :mod:`erasekit.asru` runs them in its loop."""

from __future__ import annotations

import torch

__all__ = ["group_advantages", "token_kl", "grpo_loss"]


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4, scale: bool = True) -> torch.Tensor:
    """Group-relative advantages of a (P, G) reward tensor (P prompts, G responses each): ``(r - mean_g) /
    (std_g + eps)`` per row, std unbiased (as TRL); a group whose responses all got the same reward has zero
    advantage (nothing to learn from it). ``scale=False``: ``r - mean_g`` only (TRL's ``scale_rewards=False``, one of
    Dr. GRPO's two changes; Liu et al., 2025): a group whose rewards differ only by a small quality term keeps small
    advantages.

    >>> group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]])).round(decimals=3)
    tensor([[ 0.8660, -0.8660, -0.8660,  0.8660]])
    >>> group_advantages(torch.tensor([[1.0, 0.9, 1.0, 0.9]]), scale=False)
    tensor([[ 0.0500, -0.0500,  0.0500, -0.0500]])
    """
    if rewards.ndim != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (prompts, group_size >= 2), got shape {tuple(rewards.shape)}")
    mean = rewards.mean(1, keepdim=True)
    if not scale:
        return rewards - mean
    std = rewards.std(1, keepdim=True)
    return (rewards - mean) / (std + eps)


def token_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference) from the sampled tokens' log-probabilities:
    ``exp(ref - logp) - (ref - logp) - 1`` (>= 0, exactly 0 where the two agree; Schulman's k3, as GRPO and TRL)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
              advantages: torch.Tensor, clip_eps: float = 0.2, beta: float = 0.04
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO objective to *minimise* on one batch of responses.

    Args:
        logp, old_logp, ref_logp: (N, T) log-probabilities of the response tokens under the policy (with grad),
            the policy that sampled them, and the reference; mask: (N, T) bool, the response tokens;
            advantages: (N,) one per response (:func:`group_advantages`, flattened).
    Returns:
        ``-(1/N) sum_i (1/|o_i|) sum_t [min(rho A_i, clip(rho, 1-eps, 1+eps) A_i) - beta KL_t]`` with
        ``rho = exp(logp - old_logp)``, and floats ``loss, kl, clip_frac``.
    """
    if not (logp.shape == old_logp.shape == ref_logp.shape == mask.shape):
        raise ValueError(f"shapes differ: {logp.shape}, {old_logp.shape}, {ref_logp.shape}, {mask.shape}")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must be ({logp.shape[0]},), got {tuple(advantages.shape)}")
    m = mask.float()
    ratio = torch.exp(logp - old_logp)
    adv = advantages.unsqueeze(1)
    surr = torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    kl = token_kl(logp, ref_logp)
    per_tok = surr - beta * kl
    n_tok = m.sum(1).clamp_min(1)
    loss = -((per_tok * m).sum(1) / n_tok).mean()
    with torch.no_grad():
        kl_mean = float(((kl * m).sum(1) / n_tok).mean())
        clipped = ((ratio - 1).abs() > clip_eps).float()
        clip_frac = float((clipped * m).sum() / m.sum().clamp_min(1))
    return loss, {"loss": float(loss.detach()), "kl": kl_mean, "clip_frac": clip_frac}
