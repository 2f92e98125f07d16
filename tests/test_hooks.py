"""Capture and steering hooks: layer-index convention, exact deltas, prefill rule, hook cleanup."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from torch import nn

from erasekit.hooks import capture, check_layers, collect_activations, steer


def _inputs(a, n=2):
    questions = ["what is this", "a longer question to force padding"][:n]
    images = (
        [torch.rand(3, *a.image_size, generator=torch.Generator().manual_seed(i)) for i in range(n)]
        if a.is_multimodal
        else None
    )
    return questions, images


def _hook_counts(a):
    return [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in a.layers]


@contextmanager
def probe(a, layer):
    """Record the raw input of a layer BEFORE any steering pre-hook (registered first with prepend=True)."""
    seen = []
    handle = a.layers[layer].register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"]).detach()),
        with_kwargs=True,
        prepend=True,
    )
    try:
        yield seen
    finally:
        handle.remove()


def test_capture_equals_output_hidden_states(any_adapter):
    a = any_adapter
    batch = a.encode(*_inputs(a))
    with torch.no_grad(), capture(a) as rec:
        out = a.model(**batch, output_hidden_states=True)
    for l in range(a.num_layers):
        (h,) = rec[l]
        ref = out.hidden_states[l]
        if a.family == "qwen3_vl" and 0 < l <= len(a.model.config.vision_config.deepstack_visual_indexes):
            # Deepstack features are added after layer l-1 returns: HF records the layer output without them,
            # the layer input (ours) has them, at image positions only.
            image = batch["mm_token_type_ids"].bool()
            assert torch.equal(h[~image], ref[~image])
            assert not torch.allclose(h[image], ref[image])
        else:
            assert torch.equal(h, ref), l


def test_capture_last_position(tiny_llava):
    a = tiny_llava
    batch = a.encode(*_inputs(a))
    with torch.no_grad(), capture(a, [1], position="last") as last, capture(a, [1]) as full:
        a.model(**batch)
    assert torch.equal(last[1][0], full[1][0][:, -1])


def test_collect_activations_matches_single_pass(any_adapter):
    a = any_adapter
    questions, images = _inputs(a)
    acts = collect_activations(a, questions, images, layers=[0, 1], batch_size=1, progress=False)
    batch = a.encode(questions, images)
    with torch.no_grad():
        hs = a.model(**batch, output_hidden_states=True).hidden_states
    for l in (0, 1):
        assert acts[l].shape == (2, a.hidden_size) and acts[l].dtype == torch.float32
        # batch_size=1 (no padding) vs a padded batch; the last token is text, so Qwen3-VL deepstack agrees too
        assert torch.allclose(acts[l], hs[l][:, -1], atol=1e-5)
    all_tokens = collect_activations(a, questions, images, layers=[1], position="all", batch_size=2, progress=False)
    assert all_tokens[1].shape == (int(batch["attention_mask"].sum()), a.hidden_size)


def test_collect_activations_leaves_no_hooks(tiny_causal_lm):
    a = tiny_causal_lm
    before = _hook_counts(a)
    collect_activations(a, ["x", "y z"], layers=[0], progress=False)  # stops early after layer 0
    assert _hook_counts(a) == before


def test_unknown_layer_raises(tiny_causal_lm):
    with pytest.raises(ValueError, match=r"valid layers are 0\.\.1"):
        check_layers(tiny_causal_lm, [2])
    with pytest.raises(ValueError, match=r"0\.\.1"):
        with steer(tiny_causal_lm, {-1: torch.zeros(32)}):
            pass
    with pytest.raises(ValueError, match="position"):
        with capture(tiny_causal_lm, [0], position="first"):
            pass


@pytest.mark.parametrize("mode", ["prefill", "all", "constant"])
def test_constant_vector_changes_layer_input_exactly(any_adapter, mode):
    a = any_adapter
    l = a.num_layers - 1
    v = torch.randn(a.hidden_size, generator=torch.Generator().manual_seed(0))
    batch = a.encode(*_inputs(a))
    with torch.no_grad():
        with capture(a, [l]) as vanilla:
            a.model(**batch)
        with steer(a, {l: lambda h: v.expand_as(h)}, mode=mode, scale=0.5), capture(a, [l]) as steered:
            a.model(**batch)
    # upstream layers are untouched, so the vanilla state is bit-identical to the pre-steer state
    assert torch.equal(steered[l][0], vanilla[l][0] + 0.5 * v)


def test_prefill_adds_last_token_delta_everywhere(vlm_adapter):
    a = vlm_adapter
    g = torch.randn(a.hidden_size, generator=torch.Generator().manual_seed(1))
    d = torch.randn(a.hidden_size, generator=torch.Generator().manual_seed(2))
    op = lambda h: (h @ g).unsqueeze(-1) * d  # input-aware rank-one operator, (..., d) -> (..., d)
    batch = a.encode(*_inputs(a))
    with torch.no_grad():
        with capture(a, [1]) as vanilla:
            a.model(**batch)
        with steer(a, {1: op}, mode="prefill", scale=2.0), capture(a, [1]) as steered:
            a.model(**batch)
    h = vanilla[1][0]
    expected = h + 2.0 * op(h[:, -1]).unsqueeze(1)  # same vector at every position of a row
    assert torch.equal(steered[1][0], expected)


def test_all_mode_is_per_position(tiny_causal_lm):
    a = tiny_causal_lm
    op = lambda h: -0.5 * h
    batch = a.encode(["abc", "defgh"])
    with torch.no_grad():
        with capture(a, [1]) as vanilla:
            a.model(**batch)
        with steer(a, {1: op}, mode="all"), capture(a, [1]) as steered:
            a.model(**batch)
    h = vanilla[1][0]
    assert torch.equal(steered[1][0], h + 1.0 * (-0.5 * h))


def test_multi_layer_uses_upstream_steered_state(tiny_qwen3vl):
    """At every steered layer the delta comes from that layer's already-steered input (probe = raw input)."""
    a = tiny_qwen3vl
    g = torch.randn(a.hidden_size, generator=torch.Generator().manual_seed(3))
    d = torch.randn(a.hidden_size, generator=torch.Generator().manual_seed(4))
    op = lambda h: (h @ g).unsqueeze(-1) * d
    batch = a.encode(*_inputs(a))
    layers = list(range(1, a.num_layers))
    with torch.no_grad(), probe(a, 1) as raw1, probe(a, 2) as raw2:
        with steer(a, {l: op for l in layers}, mode="prefill"), capture(a, layers) as rec:
            a.model(**batch)
    for l, raw in zip(layers, (raw1, raw2)):
        pre = raw[0]
        assert torch.equal(rec[l][0], pre + op(pre[:, -1]).unsqueeze(1))


@pytest.mark.parametrize("mode", ["prefill", "all"])
def test_decode_steps_steered_only_in_all_mode(any_adapter, mode):
    """prefill: the vector is added at every prompt position, decode steps untouched; all: every pass, every step."""
    a = any_adapter
    v = torch.randn(a.hidden_size, generator=torch.Generator().manual_seed(5))
    batch = a.encode(*_inputs(a))
    with probe(a, 1) as raw, steer(a, {1: v}, mode=mode), capture(a, [1]) as rec:
        a.generate(batch, max_new_tokens=3)
    assert len(rec[1]) == len(raw) >= 2 and rec[1][0].shape[1] == batch["input_ids"].shape[1]
    assert torch.equal(rec[1][0], raw[0] + v)
    for seen, pre in zip(rec[1][1:], raw[1:]):
        assert seen.shape[1] == 1 and torch.equal(seen, pre + v if mode == "all" else pre)


def test_persist_pushes_decode_steps_with_the_prefill_delta(vlm_adapter):
    """persist: the prompt gets the prefill's delta (from the last prompt token), and every decode step gets the same
    per-row delta, not one recomputed from the decode token."""
    a = vlm_adapter
    g = torch.randn(a.hidden_size, generator=torch.Generator().manual_seed(6))
    d = torch.randn(a.hidden_size, generator=torch.Generator().manual_seed(7))
    op = lambda h: (h @ g).unsqueeze(-1) * d
    batch = a.encode(*_inputs(a))
    with probe(a, 1) as raw, steer(a, {1: op}, mode="persist", scale=0.5), capture(a, [1]) as rec:
        a.generate(batch, max_new_tokens=3)
    assert len(rec[1]) == len(raw) >= 2
    delta = 0.5 * op(raw[0][:, -1]).unsqueeze(1)
    assert torch.equal(rec[1][0], raw[0] + delta)
    for seen, pre in zip(rec[1][1:], raw[1:]):
        assert seen.shape[1] == 1 and torch.allclose(seen, pre + delta)
        assert not torch.allclose(seen, pre + 0.5 * op(pre))  # not recomputed per decode token


def test_steering_changes_output_and_restores(tiny_causal_lm):
    a = tiny_causal_lm
    batch = a.encode(["hello there"])
    with torch.no_grad():
        base = a.model(**batch).logits
        with steer(a, {0: torch.full((a.hidden_size,), 3.0)}, mode="all"):
            moved = a.model(**batch).logits
        after = a.model(**batch).logits
    assert not torch.allclose(base, moved)
    assert torch.equal(base, after)


def test_hooks_removed_on_exit_and_on_exception(any_adapter):
    a = any_adapter
    a.model(**a.encode(["warm"]), output_hidden_states=True)  # let HF install its own lazy recorder hooks first
    before = _hook_counts(a)
    with steer(a, {0: torch.zeros(a.hidden_size)}), capture(a, [0, 1]):
        assert _hook_counts(a) != before
    assert _hook_counts(a) == before
    with pytest.raises(RuntimeError, match="boom"):
        with steer(a, {1: torch.zeros(a.hidden_size)}), capture(a, [1]):
            raise RuntimeError("boom")
    assert _hook_counts(a) == before

    def bad_op(h):
        raise KeyError("inside forward")

    with pytest.raises(KeyError):
        with steer(a, {0: bad_op}, mode="all"):
            a.model(**a.encode(["x"]))
    assert _hook_counts(a) == before


def test_nested_contexts_remove_only_their_own(tiny_causal_lm):
    a = tiny_causal_lm
    before = _hook_counts(a)
    v = torch.ones(a.hidden_size)
    batch = a.encode(["abc"])
    with torch.no_grad(), capture(a, [1]) as vanilla:
        a.model(**batch)
    with steer(a, {1: v}, mode="all"):
        inner_count = None
        with steer(a, {1: 2 * v}, mode="all"):
            inner_count = _hook_counts(a)[1][0]
        assert _hook_counts(a)[1][0] == inner_count - 1  # the outer hook is still there
        with torch.no_grad(), capture(a, [1]) as rec:
            a.model(**batch)
        assert torch.equal(rec[1][0], vanilla[1][0] + v)
    assert _hook_counts(a) == before


class _KwargTupleLayer(nn.Module):
    """A decoder layer that takes hidden_states as a keyword and returns a tuple (older HF style)."""

    def __init__(self, d):
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, hidden_states=None, extra=None):
        return (hidden_states + self.lin(hidden_states), None)


class _ToyAdapter:
    def __init__(self, d=8, n=3):
        self.model_layers = nn.ModuleList(_KwargTupleLayer(d) for _ in range(n))
        self.layers = list(self.model_layers)
        self.num_layers = n

    def forward(self, h):
        for layer in self.layers:
            h = layer(hidden_states=h)[0]
        return h


def test_kwarg_hidden_states_and_tuple_outputs():
    torch.manual_seed(0)
    toy = _ToyAdapter()
    x = torch.randn(2, 5, 8)
    v = torch.randn(8)
    with torch.no_grad():
        with capture(toy, [1]) as vanilla:
            toy.forward(x)
        with steer(toy, {1: v}, mode="prefill"), capture(toy, [1]) as steered:
            toy.forward(x)
    assert torch.equal(steered[1][0], vanilla[1][0] + v)
    assert all(len(m._forward_pre_hooks) == len(m._forward_hooks) == 0 for m in toy.layers)


def _gated_ops(a, layers, strength=1.0):
    """GatedOperators with random gates/directions (fitted range wide enough to stay quiet unless asked)."""
    from erasekit.steering import GatedOperator, InputAwareMap

    ops = {}
    for l in layers:
        g = torch.randn(a.hidden_size, generator=torch.Generator().manual_seed(10 + l), dtype=torch.float64) * 5.0
        d = torch.randn(a.hidden_size, generator=torch.Generator().manual_seed(20 + l), dtype=torch.float64)
        ops[l] = GatedOperator(InputAwareMap(d, g), strength, (-1e9, 1e9))
    return ops


@pytest.mark.parametrize("adapter_name", ["tiny_llava", "tiny_qwen3vl", "tiny_causal_lm"])
def test_frozen_read_gates_read_the_unsteered_state(adapter_name, request):
    """read="frozen": every layer's delta is op(unsteered last-token input), not op(the cascaded input)."""
    a = request.getfixturevalue(adapter_name)
    layers = list(range(a.num_layers))  # >= 2 steered layers, so there is a cascade to avoid
    before = (_hook_counts(a), len(a.model._forward_pre_hooks))
    ops = _gated_ops(a, layers)
    batch = a.encode(*_inputs(a))
    with torch.no_grad():
        with capture(a, layers) as vanilla:
            a.model(**batch)
        with steer(a, ops, mode="prefill", read="frozen"), capture(a, layers) as rec:
            with probe(a, layers[-1]) as raw_last:
                a.model(**batch)
    # at the last steered layer: its raw (upstream-steered) input + op evaluated on the UNSTEERED last token
    l = layers[-1]
    pre = raw_last[-1]
    expected = pre + ops[l](vanilla[l][0][:, -1]).unsqueeze(1)
    torch.testing.assert_close(rec[l][-1], expected)
    # "steered" reading differs (the cascade), so the test can fail
    with torch.no_grad(), steer(a, ops, mode="prefill"), capture(a, [l]) as casc:
        a.model(**batch)
    assert not torch.allclose(casc[l][0], rec[l][-1])
    assert (_hook_counts(a), len(a.model._forward_pre_hooks)) == before


def test_frozen_read_generates_like_a_cache_free_run(tiny_llava):
    """Generation with read="frozen" works with the KV cache and leaves no hooks; decode steps are untouched."""
    a = tiny_llava
    ops = _gated_ops(a, [0, 1], strength=3.0)
    batch = a.encode(*_inputs(a))
    with steer(a, ops, mode="prefill", read="frozen"):
        out = a.generate(batch, max_new_tokens=3)
    assert len(out) == 2 and not a.model._forward_pre_hooks


def test_anchor_read_uses_one_gate_for_all_layers(tiny_causal_lm):
    a = tiny_causal_lm
    layers = list(range(a.num_layers))
    ops = _gated_ops(a, layers)
    batch = a.encode(*_inputs(a))
    with torch.no_grad():
        with capture(a, [0]) as vanilla:
            a.model(**batch)
        with steer(a, ops, mode="prefill", read="anchor", anchor=0), probe(a, layers[-1]) as raw, \
                capture(a, [layers[-1]]) as rec:
            a.model(**batch)
    s = ops[0].gate_value(vanilla[0][0][:, -1])
    l = layers[-1]
    torch.testing.assert_close(rec[l][0], raw[0] + ops[l].push(s, raw[0]).unsqueeze(1))
    with pytest.raises(ValueError, match="first steered layer"):
        with steer(a, ops, read="anchor", anchor=layers[-1]):
            pass
    with pytest.raises(TypeError, match="gated operators"):
        with steer(a, {0: lambda h: h}, read="anchor", anchor=0):
            pass
    with pytest.raises(ValueError, match="read must be"):
        with steer(a, ops, read="nope"):
            pass


def test_cascade_warning_when_gate_leaves_fitted_range(tiny_causal_lm):
    from erasekit.steering import GatedOperator

    a = tiny_causal_lm
    ops = _gated_ops(a, [0, 1], strength=50.0)
    narrow = {l: GatedOperator(op.map, op.strength, (-1e-6, 1e-6)) for l, op in ops.items()}
    batch = a.encode(*_inputs(a))
    with torch.no_grad(), pytest.warns(UserWarning, match="cascade"):
        with steer(a, narrow, mode="prefill"):
            a.model(**batch)


def test_capture_passes_during_generate(tiny_llava):
    """generate() = one prefill pass over the prompt, then one single-position pass per further token."""
    batch = tiny_llava.encode(["hello there", "hi"])
    T = batch["input_ids"].shape[1]
    with capture(tiny_llava, [1], passes="all") as rec_all, capture(tiny_llava, [1], passes="prefill") as rec_pre, \
            capture(tiny_llava, [1], passes="decode") as rec_dec:
        tiny_llava.generate(batch, max_new_tokens=4, min_new_tokens=4)
    assert len(rec_all[1]) == 4 and rec_all[1][0].shape[:2] == (2, T)
    assert len(rec_pre[1]) == 1 and torch.equal(rec_pre[1][0], rec_all[1][0])
    assert len(rec_dec[1]) == 3 and all(t.shape[:2] == (2, 1) for t in rec_dec[1])
    with pytest.raises(ValueError, match="passes must be one of"):
        with capture(tiny_llava, [1], passes="steps"):
            pass


@pytest.mark.parametrize("adapter_name", ["tiny_llava", "tiny_qwen3vl", "tiny_causal_lm", "organism_adapter"])
def test_frozen_fork_equals_the_extra_pass(adapter_name, request):
    """read="frozen": forking the unsteered stream at the first steered layer gives exactly the gate values, logits
    and generations of the whole extra unsteered pass, and runs the layers below the span once instead of twice
    (Qwen3-VL: past its DeepStack layers; within them the fork falls back to the pass)."""
    a = request.getfixturevalue(adapter_name)
    first = max(1, a.num_layers // 2)
    layers = list(range(first, a.num_layers))
    ops = _gated_ops(a, layers, strength=3.0)
    batch = a.encode(*_inputs(a))
    runs = {}
    for route in ("fork", "pass"):
        calls = []
        handle = a.layers[0].register_forward_pre_hook(lambda *_: calls.append(1))
        record: dict = {}
        try:
            with torch.no_grad(), steer(a, ops, mode="prefill", read="frozen", record=record, frozen_route=route):
                logits = a.model(**batch).logits
        finally:
            handle.remove()
        with steer(a, ops, mode="prefill", read="frozen", frozen_route=route):
            out = a.generate(batch, max_new_tokens=4)
        runs[route] = (logits, record, len(calls), out)
    (lf, rf, cf, of), (lp, rp, cp, op) = runs["fork"], runs["pass"]
    assert torch.equal(lf, lp)
    assert rf.keys() == rp.keys() and all(torch.equal(x, y) for l in rf for x, y in zip(rf[l], rp[l]))
    assert of == op
    assert cp == 2 and cf == (1 if a.layers_chain_from(first) else 2)
    if len(layers) > 1:  # a cascade to avoid: the frozen read matters, so the equality above can fail
        with torch.no_grad(), steer(a, ops, mode="prefill", read="steered"):
            assert not torch.equal(a.model(**batch).logits, lf)
    assert not a.model._forward_pre_hooks and not any(m._forward_pre_hooks for m in a.layers)


def test_frozen_route_is_checked(tiny_causal_lm):
    with pytest.raises(ValueError, match="frozen_route"):
        with steer(tiny_causal_lm, {0: torch.zeros(tiny_causal_lm.hidden_size)}, frozen_route="twice"):
            pass
