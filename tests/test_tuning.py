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
    assert select_layers(aucs, 0.8) == [1]
    with pytest.warns(UserWarning, match="no layer"):
        assert select_layers({1: 0.6, 2: 0.7}, 0.8) == [2]
