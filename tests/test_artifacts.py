"""Artifacts: safetensors + JSON sidecar round-trips, model-id checks, atomicity, cache keys."""

import json
import os

import numpy as np
import pytest
import torch

from erasekit.artifacts import (
    ArtifactError,
    artifact_exists,
    artifact_paths,
    cache_key,
    load_artifact,
    read_sidecar,
    save_artifact,
)
from erasekit.attack import AdversarialImages, PGDResult
from erasekit.directions import ErasureDirection
from erasekit.steering import fit_mlp_steerer, fit_steerer

MODEL = "toy/tiny-llava"


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _direction():
    return ErasureDirection({2: _randn(8, seed=1), 5: _randn(8, seed=2)}, {"model_id": MODEL, "n_refusal": 17})


def test_direction_round_trip_and_sidecar(tmp_path):
    d = _direction()
    h = cache_key(prompts=["a", "b"], image=torch.zeros(3, 2, 2))
    st = save_artifact(tmp_path / "dir", d, hyperparameters={"site": "layer_input"}, data_hash=h)
    assert st == tmp_path / "dir.safetensors" and (tmp_path / "dir.json").exists()
    side = read_sidecar(tmp_path / "dir")
    assert side["kind"] == "direction" and side["model_id"] == MODEL and side["layers"] == [2, 5]
    assert side["data_hash"] == h and side["hyperparameters"] == {"site": "layer_input"}
    back = load_artifact(tmp_path / "dir.safetensors", expected_model_id=MODEL, expected_kind="direction")
    assert isinstance(back, ErasureDirection) and back.layers == [2, 5] and back.meta == d.meta
    for l in d.layers:
        assert torch.equal(back[l], d[l])
    assert artifact_exists(tmp_path / "dir", expected_model_id=MODEL, data_hash=h)
    assert not artifact_exists(tmp_path / "dir", data_hash="other")
    assert not artifact_exists(tmp_path / "nothing")


def test_model_mismatch_and_wrong_kind_are_refused(tmp_path):
    save_artifact(tmp_path / "dir", _direction())
    with pytest.raises(ArtifactError, match=r"made for model 'toy/tiny-llava', not 'llava-hf/llava-1.5-7b-hf'"):
        load_artifact(tmp_path / "dir", expected_model_id="llava-hf/llava-1.5-7b-hf")
    with pytest.raises(ArtifactError, match="holds a 'direction' artifact, expected 'steerer'"):
        load_artifact(tmp_path / "dir", expected_kind="steerer")


def test_steerer_round_trip_rank_one_and_mlp(tmp_path):
    d = _direction()
    H_f = {l: _randn(4, 8, seed=10 + l) for l in d.layers}
    H_r = {l: _randn(5, 8, seed=20 + l) for l in d.layers}
    h = _randn(3, 8, seed=99)
    for name, st in [("lin", fit_steerer(H_f, H_r, d, gamma=0.1, null_space="exact")),
                     ("mlp", fit_mlp_steerer(H_f, H_r, d, null_space="exact", hidden=4, steps=5))]:
        save_artifact(tmp_path / name, st, model_id=MODEL, hyperparameters={"gamma": 0.1})
        back = load_artifact(tmp_path / name, expected_model_id=MODEL, expected_kind="steerer")
        assert back.layers == st.layers and back.meta == json.loads(json.dumps(st.meta))
        for l in st.layers:
            assert type(back[l]) is type(st[l]) and back[l].meta == st[l].meta
            assert torch.equal(back.operators(0.3)[l](h), st.operators(0.3)[l](h))


def test_images_pgd_result_and_tensor_dict(tmp_path):
    res = [PGDResult(torch.rand(3, 4, 4), [3.0, 2.0, 1.0], {"eps": 16 / 255}) for _ in range(2)]
    adv = AdversarialImages.from_results(res, {"prompts": ["q1", "q2"]})
    save_artifact(tmp_path / "adv", adv, model_id=MODEL)
    back = load_artifact(tmp_path / "adv")
    assert torch.equal(back.images, adv.images) and torch.equal(back.loss_history, adv.loss_history)
    assert back.meta == {"eps": 16 / 255, "prompts": ["q1", "q2"]}
    save_artifact(tmp_path / "one", res[0])
    one = load_artifact(tmp_path / "one")
    assert torch.equal(one.image, res[0].image) and one.loss_history == [3.0, 2.0, 1.0]
    tensors = {"a": torch.arange(6).reshape(2, 3), "b": torch.ones(2, dtype=torch.bfloat16)}
    save_artifact(tmp_path / "t", tensors)
    got = load_artifact(tmp_path / "t")
    assert got.keys() == tensors.keys() and all(torch.equal(got[k], tensors[k]) for k in tensors)


def test_tampered_or_orphaned_tensors_are_detected(tmp_path):
    save_artifact(tmp_path / "x", {"a": torch.zeros(3)})
    save_artifact(tmp_path / "y", {"a": torch.ones(3)})
    st_x, _ = artifact_paths(tmp_path / "x")
    st_y, _ = artifact_paths(tmp_path / "y")
    os.replace(st_y, st_x)  # a tensors file that is not the one the sidecar describes
    with pytest.raises(ArtifactError, match="sha256"):
        load_artifact(tmp_path / "x")
    with pytest.raises(ArtifactError, match="missing"):
        load_artifact(tmp_path / "y")


def test_failed_save_leaves_previous_artifact_and_no_temp_files(tmp_path):
    save_artifact(tmp_path / "x", {"a": torch.zeros(3)}, hyperparameters={"v": 1})
    with pytest.raises(TypeError, match="hyperparameters.bad"):
        save_artifact(tmp_path / "x", {"a": torch.ones(3)}, hyperparameters={"bad": object()})
    assert torch.equal(load_artifact(tmp_path / "x")["a"], torch.zeros(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json", "x.safetensors"]
    with pytest.raises(TypeError, match="unsupported object"):
        save_artifact(tmp_path / "z", [torch.zeros(1)])


def test_cache_key_is_value_based_and_order_free():
    a = cache_key(x=torch.arange(4.0), names=["a", "b"], eps=16 / 255, cfg={"g": 0.1, "l": [1, 2]})
    b = cache_key(cfg={"l": [1, 2], "g": 0.1}, eps=16 / 255, names=["a", "b"], x=torch.arange(4.0))
    assert a == b and len(a) == 64
    assert cache_key(x=torch.arange(4.0)) != cache_key(x=torch.arange(4))  # dtype matters
    assert cache_key(x=torch.zeros(2, 3)) != cache_key(x=torch.zeros(3, 2))  # shape matters
    assert cache_key(x=["ab", "c"]) != cache_key(x=["a", "bc"])
    assert cache_key(x=np.ones(3)) == cache_key(x=np.ones(3))
    assert cache_key(d=_direction()) == cache_key(d=_direction())
    assert cache_key(x=torch.ones(2, dtype=torch.bfloat16)) != cache_key(x=torch.ones(2, dtype=torch.float16))
    with pytest.raises(TypeError, match="cannot hash"):
        cache_key(x=object())
