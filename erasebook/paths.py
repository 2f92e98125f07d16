"""Where erasekit keeps what it ships (data/) and what it caches (.cache/); overridable by environment variables."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """Shipped data: the trained organism and recorded results (``ERASEKIT_DATA`` overrides)."""
    return Path(os.environ.get("ERASEKIT_DATA", REPO_ROOT / "data"))


def organism_dir() -> Path:
    """The embedded default model: a transformers folder (``ERASEKIT_ORGANISM`` overrides)."""
    return Path(os.environ.get("ERASEKIT_ORGANISM", data_dir() / "organism"))


def cache_dir() -> Path:
    """Cached pipeline artifacts keyed by their inputs (``ERASEKIT_CACHE`` overrides)."""
    p = Path(os.environ.get("ERASEKIT_CACHE", REPO_ROOT / ".cache" / "erasekit"))
    p.mkdir(parents=True, exist_ok=True)
    return p


def repo_relative(path: str | os.PathLike) -> str:
    """``path`` relative to the repository when it lies inside it (for records committed to the repo: no absolute
    machine paths), else the absolute path."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(REPO_ROOT))
    except ValueError:
        return str(p)
