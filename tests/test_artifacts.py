"""Artifacts: safetensors + JSON sidecar round-trips, model-id checks, atomicity, cache keys, the kind registry."""

import ast
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import erasekit.artifacts as artifacts_module
from erasekit.artifacts import (
    ArtifactError,
    artifact_exists,
    artifact_paths,
    load_artifact,
    read_sidecar,
    register_artifact,
    registered_kinds,
    save_artifact,
)
from erasekit.attack import AdversarialImages, PGDResult
from erasekit.cache_keys import cache_key
from erasekit.directions import ErasureDirection
from erasekit.steering import InputAwareMap, InputAwareSteerer, MLPMap, fit_mlp_steerer, fit_steerer

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


# --- the kind registry and the on-disk format ----------------------------------------------------------------------

def _t(*shape, start=0.0, dtype=torch.float32):
    n = int(np.prod(shape))
    return (torch.arange(n, dtype=torch.float64) / 8 + start).reshape(shape).to(dtype)


def _fixed(kind):
    """One fixed object per kind: the same bytes on every machine."""
    return {
        "direction": lambda: ErasureDirection({1: _t(4), 3: _t(4, start=-1.0)}, {"model_id": "toy/fixed",
                                                                                "n_refusal": 3}),
        "steerer": lambda: InputAwareSteerer(
            {1: InputAwareMap(_t(4), _t(4, start=0.5), {"gamma": 0.1, "n_forget": 2}),
             2: MLPMap(_t(2, 4), _t(2), _t(4, 2, start=-0.5), _t(4), {"hidden": 2})},
            {"model_id": "toy/fixed", "gate": "contrastive"}),
        "adversarial_images": lambda: AdversarialImages(_t(2, 3, 2, 2), _t(2, 3, dtype=torch.float64),
                                                        {"eps": 16 / 255}),
        "pgd_result": lambda: PGDResult(_t(3, 2, 2), [3.0, 2.5, 2.0], {"eps": 16 / 255, "steps": 3}),
        "tensors": lambda: {"a": torch.arange(6).reshape(2, 3), "b": _t(2, dtype=torch.bfloat16)},
    }[kind]()


# Recorded with the artifacts module as it was before the registry (isinstance chains): sha256 of the tensors
# file and of the sidecar text with its "created" time masked. Cached artifacts saved by earlier versions must
# keep loading, and new saves must stay identical to them.
FORMAT_BYTES = {
    "direction": ([1, 3], ["layer.1", "layer.3"],
                  "078fc248bdc7f5e6cf95ed9a0fabe9078dec33fcefa19c3b5df798e92378b1de",
                  "ff804e72ff89ce21cd638a397857e541f73121ed8d988f16d6fe28e55c76ed18"),
    "steerer": ([1, 2], ["layer.1.direction", "layer.1.gate", "layer.2.b1", "layer.2.b2", "layer.2.w1", "layer.2.w2"],
                "2a3f8d7f27700a3ca2d38baa484782c2634258b0a87402d3d982f505879fa688",
                "e91f7f005db86003a191030dfec05e45afdeb4070aed3bf11e25d871309781fa"),
    "adversarial_images": (None, ["images", "loss_history"],
                           "a24564945a62b75dd2ccb57f1813903e72783919faee50de8819de77c38040bb",
                           "51202eef94e3c93de846c6b3647adda8aa8af7f815ade055fef62d5559961244"),
    "pgd_result": (None, ["image", "loss_history"],
                   "8eab4d9aaec3398a4ad6f6a8af6955d4bf27e025832f21e8944b5b9090981471",
                   "6bc658c10e114ff937c36f2983cedcfc3a14f3cb2037175ee6c5abe1c725df8a"),
    "tensors": (None, ["a", "b"], "a214bccd3b8965fcfa6183a8e9d26138ff65b96ff6b8e9c52fcdcffa289ebba7",
                "7d7eb61324156a6fde5dd57653fd92baed5460210d98c6cba3899012ac919e3a"),
}


def _save_fixed(folder, kind):
    return save_artifact(folder / kind, _fixed(kind), model_id="toy/fixed", data_hash="0" * 64,
                         hyperparameters={"gamma": 0.1, "eps": 16 / 255, "layers": [1, 2]})


def test_every_registered_kind_is_covered():
    assert set(registered_kinds()) == set(FORMAT_BYTES)


@pytest.mark.parametrize("kind", sorted(FORMAT_BYTES))
def test_registry_round_trips_each_kind(tmp_path, kind):
    obj = _fixed(kind)
    _save_fixed(tmp_path, kind)
    back = load_artifact(tmp_path / kind, expected_kind=kind, expected_model_id="toy/fixed")
    assert type(back) is type(obj)
    assert cache_key(o=back) == cache_key(o=obj)  # same type, fields, tensor dtypes, shapes and bytes


@pytest.mark.parametrize("kind", sorted(FORMAT_BYTES))
def test_saved_bytes_match_the_recorded_format(tmp_path, kind):
    layers, names, tensors_sha, sidecar_sha = FORMAT_BYTES[kind]
    st = _save_fixed(tmp_path, kind)
    side = read_sidecar(st)
    assert side["kind"] == kind and side["layers"] == layers and side["format"] == "erasekit-artifact"
    assert side["version"] == 1 and side["tensors_file"] == f"{kind}.safetensors"
    with open(st, "rb") as f:  # safetensors: 8-byte little-endian header length, then the JSON header
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert sorted(k for k in header if k != "__metadata__") == names
    assert hashlib.sha256(st.read_bytes()).hexdigest() == tensors_sha
    text = re.sub(r'"created": "[^"]*"', '"created": "CREATED"', artifact_paths(st)[1].read_text())
    assert hashlib.sha256(text.encode()).hexdigest() == sidecar_sha


def test_artifacts_module_imports_no_domain_module():
    tree = ast.parse(Path(artifacts_module.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
    ours = {m for m in imported if m.startswith(".") or m.startswith("erasekit")}
    assert ours <= {".cache_keys", ".files"}, ours


def test_artifacts_load_in_a_fresh_interpreter_that_imports_only_artifacts(tmp_path):
    for kind in ("steerer", "direction", "pgd_result"):
        _save_fixed(tmp_path, kind)
    code = ("import sys; from erasekit.artifacts import load_artifact; "
            "print(*[type(load_artifact(p)).__name__ for p in sys.argv[1:]])")
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code, *(str(tmp_path / k) for k in ("steerer", "direction",
                                                                                     "pgd_result"))],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["InputAwareSteerer", "ErasureDirection", "PGDResult"]


def test_registry_refuses_conflicts_and_unknown_kinds(tmp_path):
    class Other:
        pass

    with pytest.raises(ValueError, match="already registered for erasekit.directions.ErasureDirection"):
        register_artifact("direction", Other, lambda o: None, lambda t, s: None)
    with pytest.raises(ValueError, match="already registered as artifact kind 'direction'"):
        register_artifact("direction_v2", ErasureDirection, lambda o: None, lambda t, s: None)
    assert "direction_v2" not in registered_kinds()
    _save_fixed(tmp_path, "tensors")
    side = json.loads((tmp_path / "tensors.json").read_text())
    (tmp_path / "tensors.json").write_text(json.dumps({**side, "kind": "hologram"}))
    with pytest.raises(ArtifactError, match="unknown artifact kind 'hologram'"):
        load_artifact(tmp_path / "tensors")
    with pytest.raises(TypeError, match="unsupported object dict"):
        save_artifact(tmp_path / "bad", {"a": [1.0]})
