"""Atomic writes: a file or a whole folder appears complete or not at all.

Both write to a temporary sibling in the target's folder (same file system, so the final rename is atomic) and
rename it over the target only once everything is written; when the writer raises, the temporary is removed and
the previous target, if any, is left as it was.

Example:
    >>> atomic_write("out/record.json", json.dumps(record))                 # doctest: +SKIP
    >>> with atomic_dir("out/organism") as tmp:                             # doctest: +SKIP
    ...     model.save_pretrained(tmp)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_write", "atomic_dir"]


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` (bytes, or str as UTF-8) to ``path`` all or nothing: a temporary file in the same folder,
    fsynced, then renamed over the target. A crash leaves the old file or the new one, never half of either."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Context manager yielding an empty temporary folder beside ``path``; on a clean exit it replaces ``path``.

    Write the folder's files into the yielded path. When the block raises, the temporary folder is removed and
    ``path`` is left untouched (the old folder, or none): a reader never sees a half-written folder. An existing
    ``path`` is moved aside and deleted only after the new folder is in place.
    """
    path = Path(os.path.abspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    aside = None
    if path.exists():  # os.replace cannot put a folder over a non-empty one: move the old one aside first
        aside = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
        os.replace(path, aside / path.name)
    try:
        os.replace(tmp, path)
    except BaseException:
        if aside is not None:
            os.replace(aside / path.name, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
