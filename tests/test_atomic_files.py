"""The one atomic writer: the target is its old content or the complete new one, never a part."""

import os
from pathlib import Path

import pytest

from uniovseg.atomic_files import atomic_folder, atomic_write


def test_success_replaces_and_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "sub" / "out.json"
    with atomic_write(str(target), "w", encoding="utf-8") as handle:
        handle.write("old")
    assert target.read_text() == "old"
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(str(target), "w", encoding="utf-8") as handle:
            handle.write("half of the n")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert os.listdir(target.parent) == ["out.json"]  # no temporary left behind


def test_durable_write_with_a_chosen_temporary(tmp_path):
    target = tmp_path / "model.pth"
    temporary = tmp_path / ".model.pth.1.tmp"
    with atomic_write(str(target), temporary=str(temporary), durable=True) as handle:
        handle.write(b"weights")
        assert temporary.is_file() and not target.exists()
    assert target.read_bytes() == b"weights" and not temporary.exists()
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(str(target), "a"):
            pass


def test_atomic_folder_replaces_a_whole_folder_or_nothing(tmp_path):
    target = tmp_path / "bundle"
    with atomic_folder(str(target), durable=True) as folder:
        assert os.path.isdir(folder) and not target.exists()
        (Path(folder) / "a.txt").write_text("one")
        (Path(folder) / "b.txt").write_text("two")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt", "b.txt"]
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_folder(str(target)) as folder:
            (Path(folder) / "a.txt").write_text("half")
            raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "one" and (target / "b.txt").exists()
    with atomic_folder(str(target)) as folder:
        (Path(folder) / "c.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["c.txt"]  # replaced as a whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no temporary left behind
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        with atomic_folder(str(tmp_path / "file")):
            pass
