"""L-inf PGD in pixel space (Eq. 5-6) and the harmful-target loss."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from erasekit.attack import harmful_target_loss, pgd_attack, target_token_loss


def _toy_loss(target):
    return lambda x: ((x - target) ** 2).sum()


def test_pgd_stays_in_ball_and_unit_box_and_decreases_loss():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 8, 8, generator=g)
    target = torch.rand(3, 8, 8, generator=g) * 1.4 - 0.2  # partly outside [0, 1] and far outside the ball
    eps = 16 / 255
    res = pgd_attack(_toy_loss(target), image, eps=eps, alpha=2 / 255, steps=30, progress=False)
    assert res.image.shape == image.shape and not res.image.requires_grad
    assert (res.image - image).abs().max() <= eps + 1e-6
    assert res.image.min() >= 0 and res.image.max() <= 1
    assert len(res.loss_history) == 30 and res.loss_history[-1] < res.loss_history[0]
    # the best feasible point is the clip of the target onto ball n box; 30 steps of 2/255 reach it to 1 step
    best = torch.minimum(torch.maximum(target, (image - eps).clamp(0, 1)), (image + eps).clamp(0, 1))
    assert (res.image - best).abs().max() <= 2 / 255 + 1e-6


def test_pgd_unconstrained_reaches_target_and_box():
    image = torch.full((3, 4, 4), 0.5)
    target = torch.linspace(-0.5, 1.5, 48).reshape(3, 4, 4)
    res = pgd_attack(_toy_loss(target), image, eps=None, alpha=0.01, steps=120, progress=False)
    torch.testing.assert_close(res.image, target.clamp(0, 1), rtol=0, atol=0.0101)
    assert res.meta["eps"] is None


def test_pgd_random_start_is_seeded_and_feasible():
    image = torch.full((3, 5, 5), 0.98)
    zero = lambda x: (x * 0).sum()  # zero gradient: x never moves after the start
    a = pgd_attack(zero, image, eps=0.05, steps=2, random_start=True, seed=3, progress=False)
    b = pgd_attack(zero, image, eps=0.05, steps=2, random_start=True, seed=3, progress=False)
    c = pgd_attack(zero, image, eps=0.05, steps=2, random_start=True, seed=4, progress=False)
    assert torch.equal(a.image, b.image) and not torch.equal(a.image, c.image)
    assert (a.image - image).abs().max() <= 0.05 + 1e-6 and a.image.max() <= 1
    u = pgd_attack(zero, image, eps=None, steps=1, random_start=True, progress=False)
    assert u.image.std() > 0.1  # uniform noise start in the unconstrained setting


def test_pgd_errors():
    loss = lambda x: x.sum()
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        pgd_attack(loss, torch.zeros(1, 3, 4, 4), progress=False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pgd_attack(loss, torch.full((3, 4, 4), 2.0), progress=False)
    with pytest.raises(ValueError, match="eps"):
        pgd_attack(loss, torch.zeros(3, 4, 4), eps=0, progress=False)
    with pytest.raises(ValueError, match="scalar"):
        pgd_attack(lambda x: x, torch.zeros(3, 4, 4), steps=1, progress=False)


# --- harmful_target_loss with a fake adapter: exact CE bookkeeping, independent of any real model ---------------

V = 11


class _FakeModel(nn.Module):
    """logits[b, t] = E[ids[b, t]] @ O + mean_pixels[b] @ Q: depends on every token and on the pixels."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = nn.Parameter(torch.randn(V, 6, generator=g))
        self.out = nn.Parameter(torch.randn(6, V, generator=g))
        self.pix = nn.Parameter(torch.randn(3, V, generator=g) * 3)
        self.calls = []

    def forward(self, input_ids, attention_mask, pixel_values, use_cache=True, logits_to_keep=0):
        self.calls.append((tuple(input_ids.shape), logits_to_keep))
        logits = self.emb[input_ids] @ self.out + (pixel_values.mean((2, 3)) @ self.pix).unsqueeze(1)
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return SimpleNamespace(logits=logits)


class _FakeAdapter:
    def __init__(self):
        self.model = _FakeModel()

    def encode(self, questions, images=None, answers=None, chat=True):
        rows, labs = [], []
        for q, a in zip(questions, answers):
            q_ids, a_ids = [ord(c) % V for c in q], [ord(c) % V for c in a]
            rows.append(q_ids + a_ids)
            labs.append([-100] * len(q_ids) + a_ids)
        T = max(map(len, rows))
        ids = torch.tensor([[0] * (T - len(r)) + r for r in rows])  # left padding
        labels = torch.tensor([[-100] * (T - len(r)) + r for r in labs])
        return {"input_ids": ids, "attention_mask": (labels > -1000).long(), "pixel_values": images, "labels": labels}


def _reference_ce(adapter, batch):
    logits = adapter.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, V), batch["labels"][:, 1:].reshape(-1), ignore_index=-100)


def test_harmful_target_loss_is_mean_target_token_ce_in_one_forward():
    adapter = _FakeAdapter()
    targets = ["sure thing", "here it is ok", "ab", "xyz"]
    pixels = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(7)
    loss_fn = harmful_target_loss(adapter, "how to?", targets, k=4, generator=gen)
    loss = loss_fn(pixels)
    assert len(adapter.model.calls) == 1 and adapter.model.calls[0][0][0] == 4
    # only the answer span's logits were requested (longest answer 13 tokens + 1)
    assert adapter.model.calls[0][1] == 14
    # k == len(targets) without replacement: every target once, so the loss is order-free and reproducible
    batch = adapter.encode(["how to?"] * 4, images=pixels.expand(4, -1, -1, -1), answers=targets)
    torch.testing.assert_close(loss, _reference_ce(adapter, batch))


def test_target_token_loss_on_kept_logits_matches_full():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 9, V, generator=g)
    labels = torch.full((2, 9), -100)
    labels[0, 6:], labels[1, 7:] = torch.tensor([1, 2, 3]), torch.tensor([4, 5])
    full = target_token_loss(logits, labels)
    torch.testing.assert_close(target_token_loss(logits[:, -4:], labels), full)
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(full, ref)
    with pytest.raises(ValueError, match="no target tokens"):
        target_token_loss(logits, torch.full((2, 9), -100))


def test_pgd_with_harmful_target_loss_lowers_it_and_leaves_params_without_grad():
    adapter = _FakeAdapter()
    loss_fn = harmful_target_loss(adapter, ["q one", "q two"], ["sure", "ok here", "fine"], k=3)
    image = torch.full((3, 4, 4), 0.5)
    res = pgd_attack(loss_fn, image, eps=16 / 255, alpha=2 / 255, steps=8, progress=False)
    assert min(res.loss_history[1:]) < res.loss_history[0]
    assert all(p.grad is None for p in adapter.model.parameters())
    assert all(shape[0] == 3 for shape, _ in adapter.model.calls)


@pytest.mark.parametrize("fixture", ["tiny_llava", "tiny_qwen25vl", "tiny_qwen3vl"])
def test_pgd_on_tiny_vlm(request, fixture):
    try:
        adapter = request.getfixturevalue(fixture)
    except pytest.FixtureLookupError:
        pytest.skip(f"{fixture} fixture not available (tests/conftest.py)")
    h, w = adapter.image_size or (28, 28)
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(0))
    targets = ["Sure, here is how", "Of course"]
    loss_fn = harmful_target_loss(adapter, "Tell me.", targets, k=2)
    # same prompt, every target each call: the loss is a deterministic function of the pixels
    batch = adapter.encode(["Tell me."] * 2, images=image.expand(2, -1, -1, -1), answers=targets)
    with torch.no_grad():
        ref = adapter.model(**batch).loss  # the model's own mean over target tokens, for this check only
        ours = loss_fn(image)
    torch.testing.assert_close(ours.float(), ref.float(), rtol=1e-4, atol=1e-4)
    res = pgd_attack(loss_fn, image, eps=16 / 255, alpha=1 / 255, steps=3, progress=False)
    assert (res.image - image).abs().max() <= 16 / 255 + 1e-6
    assert res.image.min() >= 0 and res.image.max() <= 1
    assert len(res.loss_history) == 3 and not torch.equal(res.image, image)  # gradients reached the pixels
