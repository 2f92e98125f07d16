"""erasekit.heldout: disjoint eval / tune / fit roles, stable across forget ratios, clear errors."""

import pytest

from erasebook.world import make_world
from erasekit.heldout import partition_profiles


@pytest.fixture(scope="module")
def world():
    return make_world(40, 10, image_size=28)


def test_roles_are_disjoint_and_stable(world):
    p = partition_profiles(world, n_eval=5, n_tune=4, n_fit=10, celeb_eval=4)
    ids = {r: p.ids(r) for r in ("eval", "tune", "fit")}
    for g in ("Ret", "Cele"):
        for a in ids:
            for b in ids:
                if a < b:
                    assert not ids[a][g] & ids[b][g]
    assert [len(ids[r]["Ret"]) for r in ("eval", "tune", "fit")] == [5, 4, 10]
    assert len(ids["eval"]["Cele"]) == 4 and len(ids["fit"]["Cele"]) == 6
    assert partition_profiles(world, n_eval=5, n_tune=4, n_fit=10, celeb_eval=4) == p  # seeded
    for pct in (5, 10, 15):  # the same profiles, retain at every ratio
        assert {r["ID"] for r in p.rows(world, pct, "eval")["Ret"]} == ids["eval"]["Ret"]
    forget = {r["ID"] for r in world.split("forget_15")}
    assert not forget & set().union(*(ids[r]["Ret"] for r in ids))


def test_overlap_and_size_errors(world):
    p = partition_profiles(world, n_eval=2, n_tune=2, n_fit=2, celeb_eval=2)
    with pytest.raises(ValueError, match="both"):
        type(p)({"eval": ("a", "b"), "fit": ("b",)}, {"eval": ()})
    with pytest.raises(ValueError, match="retain at every forget ratio"):
        partition_profiles(world, n_eval=30, n_tune=30)
    with pytest.raises(ValueError, match="role must be"):
        p.ids("test")
