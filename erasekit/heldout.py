"""Who is used for what: disjoint retain and celebrity profiles for fitting, tuning and scoring.

Held out means held out (the project's first rule): a retain or celebrity profile whose questions are *scored*
(the Ret / Cele columns) never contributes an activation to H_r and never appears in a set that chooses a
hyperparameter; the forget side is the user's forget set itself (H_f, and the tuning of λ / α / layers), and the
Test split (paraphrases, transformed portraits of the forget people) never enters any fit.

:func:`partition_profiles` draws one seeded permutation of the retain profiles that are retain at *every* forget
ratio (retain_85 on MLLMU-Bench, so a profile has the same role at 5, 10 and 15 %) and of the celebrities, and cuts
it into roles:

=========  =====================================================================================
``eval``   retain profiles scored as Ret; celebrities scored as Cele
``tune``   retain profiles that hyperparameter rules protect (λ, α, the layer threshold)
``fit``    retain profiles and celebrities whose questions form H_r
=========  =====================================================================================

Example::

    parts = partition_profiles(world, n_eval=20, n_tune=20, n_fit=60, celeb_eval=20)
    rows = parts.rows(world, forget_pct=5, role="eval")      # {"Ret": [...], "Cele": [...]}
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from typing import Any

__all__ = ["ROLES", "ProfilePartition", "partition_profiles"]

ROLES = ("eval", "tune", "fit")


@dataclasses.dataclass(frozen=True)
class ProfilePartition:
    """Profile IDs per role; ``retain[role]`` and ``celeb[role]`` are tuples of IDs (disjoint across roles)."""

    retain: Mapping[str, tuple]
    celeb: Mapping[str, tuple]
    seed: int = 0

    def __post_init__(self) -> None:
        self.check_disjoint()

    def check_disjoint(self) -> None:
        """Raise if any profile has two roles."""
        for name, roles in (("retain", self.retain), ("celebrity", self.celeb)):
            seen: dict[Any, str] = {}
            for role, ids in roles.items():
                for i in ids:
                    if i in seen:
                        raise ValueError(f"{name} profile {i!r} is in both {seen[i]!r} and {role!r}: "
                                         "held-out profiles must not be used for fitting or tuning")
                    seen[i] = role

    def ids(self, role: str) -> dict[str, set]:
        """``{"Ret": retain IDs, "Cele": celebrity IDs}`` of one role."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        return {"Ret": set(self.retain.get(role, ())), "Cele": set(self.celeb.get(role, ()))}

    def rows(self, source: Any, forget_pct: int, role: str) -> dict[str, list[dict]]:
        """``{"Ret": rows, "Cele": rows}`` of ``role`` from the retain_{100-k} split and the celebrity split."""
        ids = self.ids(role)
        ret = [r for r in source.split(f"retain_{100 - forget_pct}") if r["ID"] in ids["Ret"]]
        cele = [r for r in source.split("Retain_Set") if r["ID"] in ids["Cele"]]
        return {"Ret": ret, "Cele": cele}

    def key(self) -> dict:
        """A JSON-able description for cache keys."""
        return {"retain": {r: list(v) for r, v in self.retain.items()},
                "celeb": {r: list(v) for r, v in self.celeb.items()}}


def partition_profiles(source: Any, n_eval: int | None = None, n_tune: int | None = None, n_fit: int | None = None,
                       celeb_eval: int | None = None, celeb_fit: int | None = None,
                       seed: int = 0) -> ProfilePartition:
    """Cut the retain and celebrity profiles into disjoint ``eval`` / ``tune`` / ``fit`` roles (seeded).

    Args:
        source: World or :class:`erasekit.data.MLLMUBench` (anything with ``split(name)``).
        n_eval, n_tune, n_fit: retain profiles per role; defaults: 20 scored and 20 tuning profiles (a quarter of
            the pool each when it is small), ``n_fit=None``: all that are left.
        celeb_eval, celeb_fit: celebrities scored (default 20, at most half) / in H_r (``None``: all that are left).
        seed: the permutation's seed.

    Retain profiles come from retain_85 (retain at every forget ratio), in a seeded order: the first ``n_eval``
    are scored, the next ``n_tune`` tune, the next ``n_fit`` fit.
    """
    pool = [r["ID"] for r in source.split("retain_85")]
    celebs = [r["ID"] for r in source.split("Retain_Set")]
    n_eval = min(20, len(pool) // 4) if n_eval is None else n_eval
    n_tune = min(20, len(pool) // 4) if n_tune is None else n_tune
    celeb_eval = min(20, len(celebs) // 2) if celeb_eval is None else celeb_eval
    for name, n in (("n_eval", n_eval), ("n_tune", n_tune), ("celeb_eval", celeb_eval)):
        if n < 0:
            raise ValueError(f"{name} must be >= 0, got {n}")
    need = n_eval + n_tune + (n_fit or 0)
    if need > len(pool) or (n_fit is None and n_eval + n_tune >= len(pool)):
        raise ValueError(f"asked for {n_eval} eval + {n_tune} tune + {n_fit} fit retain profiles, but only "
                         f"{len(pool)} profiles are retain at every forget ratio (retain_85); ask for fewer")
    if celeb_eval + (celeb_fit or 0) > len(celebs) or (celeb_fit is None and celeb_eval >= len(celebs)):
        raise ValueError(f"asked for {celeb_eval} eval + {celeb_fit} fit celebrities, but the celebrity split "
                         f"has {len(celebs)}; ask for fewer")
    pool = sorted(pool, key=str)
    celebs = sorted(celebs, key=str)
    random.Random(f"{seed}-partition-retain").shuffle(pool)
    random.Random(f"{seed}-partition-celeb").shuffle(celebs)
    a, b = n_eval, n_eval + n_tune
    retain = {"eval": tuple(pool[:a]), "tune": tuple(pool[a:b]),
              "fit": tuple(pool[b:] if n_fit is None else pool[b:b + n_fit])}
    celeb = {"eval": tuple(celebs[:celeb_eval]),
             "fit": tuple(celebs[celeb_eval:] if celeb_fit is None else celebs[celeb_eval:celeb_eval + celeb_fit])}
    return ProfilePartition(retain, celeb, seed)
