"""Atomic writes: a file or a folder is replaced whole or not at all, and no temporary is left behind."""

import pytest

from erasekit.files import atomic_dir, atomic_write


def test_atomic_write_replaces_and_cleans_up(tmp_path):
    target = tmp_path / "sub" / "record.json"
    atomic_write(target, "old")
    atomic_write(target, b"new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["record.json"]


def test_atomic_dir_writes_a_new_folder(tmp_path):
    with atomic_dir(tmp_path / "out") as tmp:
        assert tmp.parent == tmp_path and tmp.name != "out"
        (tmp / "a.txt").write_text("a")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_dir_replaces_an_existing_folder_whole(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("stale")
    with atomic_dir(out) as tmp:
        (tmp / "fresh.txt").write_text("fresh")
    assert [p.name for p in out.iterdir()] == ["fresh.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_dir_leaves_nothing_half_written_when_the_writer_raises(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_dir(out) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("writer failed")
    assert list(tmp_path.iterdir()) == []  # no target, no temporary folder
    out.mkdir()
    (out / "kept.txt").write_text("kept")
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_dir(out) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("writer failed")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in out.iterdir()] == ["kept.txt"] and (out / "kept.txt").read_text() == "kept"
