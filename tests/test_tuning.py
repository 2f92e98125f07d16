"""erasekit.tuning: AUC, held-out gate AUC per layer, layer selection by a stated threshold."""

import pytest
import torch

from erasekit.directions import ErasureDirection
from erasekit.tuning import auc, heldout_gate_auc, select_layers


def test_auc_values():
    assert auc([2, 3], [0, 1]) == 1.0 and auc([0], [1]) == 0.0 and auc([1, 1], [1, 1]) == 0.5
    with pytest.raises(ValueError, match="positives and negatives"):
        auc([], [1])


def test_heldout_gate_auc_separates_only_where_there_is_signal():
    g = torch.Generator().manual_seed(0)
    d = 16
    marker = torch.zeros(d)
    marker[0] = 3.0
    # layer 1: forget rows carry a marker the retain rows lack; layer 2: pure noise
    Hf = {1: torch.randn(40, d, generator=g) + marker, 2: torch.randn(40, d, generator=g)}
    Hr = {1: torch.randn(200, d, generator=g), 2: torch.randn(200, d, generator=g)}
    Ht = {1: torch.randn(60, d, generator=g), 2: torch.randn(60, d, generator=g)}
    direction = ErasureDirection({1: torch.randn(d, generator=g), 2: torch.randn(d, generator=g)})
    aucs = heldout_gate_auc(Hf, Hr, Ht, direction, gate="contrastive", gamma=1e-3)
    assert aucs[1] > 0.95 and 0.3 < aucs[2] < 0.75
    assert select_layers(aucs) == [1]
    assert select_layers({1: 0.80, 2: 0.77, 3: 0.74}, margin=0.05) == [1, 2]
    with pytest.warns(UserWarning, match="poorly"):
        assert select_layers({1: 0.5, 2: 0.55}) == [2]


def test_choose_gate_states_its_choices():
    from erasekit.tuning import choose_gate

    g = torch.Generator().manual_seed(1)
    d = 16
    marker = torch.zeros(d)
    marker[0] = 3.0
    Hf = {l: torch.randn(40, d, generator=g) + (marker if l == 2 else 0) for l in (1, 2)}
    Hr = {l: torch.randn(200, d, generator=g) for l in (1, 2)}
    Ht = {l: torch.randn(60, d, generator=g) for l in (1, 2)}
    direction = ErasureDirection({1: torch.randn(d, generator=g), 2: torch.randn(d, generator=g)})
    st = choose_gate(Hf, Hr, Ht, direction, gammas=(1e-3, 1e-1))
    sel = st.meta["selection"]
    assert st.layers == [2] == sel["layers"] and sel["gamma"] in (1e-3, 1e-1)
    assert set(sel["auc"]) == {"0.001", "0.1"} and st.floors and st.meta["gate"] == "contrastive"


def test_heldout_auc_by_groups_holds_each_label_out_of_both_sides(monkeypatch):
    import torch

    from erasekit import tuning
    from erasekit.directions import ErasureDirection

    g = torch.Generator().manual_seed(0)
    d = 6
    Hf, Hr, Ht = torch.randn(12, d, generator=g) + 2, torch.randn(12, d, generator=g), torch.randn(6, d, generator=g)
    fg, rg, tg = ["a", "b", "c"] * 4, ["a", "b", "c"] * 4, ["a", "b", "c"] * 2
    direction = ErasureDirection({1: torch.ones(d)}, {})
    seen = []
    real = tuning.fit_gate

    def spy(H_forget, H_retain, *a, **k):
        seen.append((H_forget.shape[0], H_retain.shape[0]))
        return real(H_forget, H_retain, *a, **k)

    monkeypatch.setattr(tuning, "fit_gate", spy)
    out = tuning.heldout_gate_auc({1: Hf}, {1: Hr}, {1: Ht}, direction, [1], groups=(fg, rg, tg), gamma=1e-2)
    assert seen == [(8, 8)] * 3  # each fit leaves one label's 4 forget and 4 retain rows out
    assert 0.5 < out[1] <= 1.0
    with pytest.raises(ValueError, match="at least 2 labels"):
        tuning.heldout_gate_auc({1: Hf}, {1: Hr}, {1: Ht}, direction, [1], groups=(["a"] * 12, rg, ["a"] * 6))
