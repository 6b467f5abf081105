"""Writing outputs: atomic files with the user's umask, clear one-line OS failures."""

from __future__ import annotations

import errno
import os
import stat

import pytest
import torch

from busseg.data.splits import save_split
from busseg.engine.io import atomic_torch_save, atomic_write_json, atomic_write_text
from busseg.errors import OutputError
from busseg.fileio import atomic_write, os_error_line, prepare_output_dir, prepare_output_file


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield lambda mask: os.umask(mask)
    os.umask(saved)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_atomic_files_get_the_mode_of_the_users_umask(tmp_path, umask, mask):
    umask(mask)
    expected = 0o666 & ~mask
    files = [
        atomic_write_text(tmp_path / "a.txt", "x"),
        atomic_write_json(tmp_path / "b.json", {"a": 1}),
        atomic_torch_save({"w": torch.zeros(2)}, tmp_path / "c.ckpt"),
    ]
    save_split({"format": "busseg-split/1"}, tmp_path / "split.json")
    files.append(tmp_path / "split.json")
    for path in files:
        assert _mode(path) == expected, f"{path.name}: {oct(_mode(path))} != {oct(expected)}"


def _fill_half_then_disk_full(tmp):
    tmp.write_bytes(b"half of the data")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("previous")
    with pytest.raises(OutputError) as info:
        atomic_write(target, _fill_half_then_disk_full)
    assert str(info.value) == f"{target}: cannot write (no space left on the device (disk full))"
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_checkpoint_on_a_full_disk_is_an_os_error_naming_the_file(tmp_path, monkeypatch):
    """torch.save given a path reports a full disk as an opaque RuntimeError; busseg saves
    through a file object so the OS error (and the file) reach the user."""
    real_save = torch.save

    def save_then_fail(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", save_then_fail)
    with pytest.raises(OutputError, match="last.ckpt: cannot write .*disk full"):
        atomic_torch_save({"w": torch.zeros(4)}, tmp_path / "last.ckpt")
    assert not list(tmp_path.iterdir())


def test_output_folder_checks(tmp_path):
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    with pytest.raises(OutputError, match=r"--out .*taken: is a file, not a folder"):
        prepare_output_dir(a_file)
    with pytest.raises(OutputError, match=r"taken.*(not a folder|a file)"):
        prepare_output_dir(a_file / "run")
    with pytest.raises(OutputError, match="is a folder"):
        prepare_output_file(tmp_path)
    with pytest.raises(OutputError, match="is a folder"):
        atomic_write_text(tmp_path, "x")
    assert prepare_output_dir(tmp_path / "new" / "run").is_dir()
    assert not [p for p in (tmp_path / "new" / "run").iterdir()], "the write check left a file behind"


def test_os_error_line_names_the_path_and_the_reason():
    assert os_error_line(PermissionError(errno.EACCES, "Permission denied", "/x/y")) == "/x/y: permission denied"
    assert os_error_line(OSError(errno.EROFS, "Read-only file system", "/mnt/r")) == "/mnt/r: read-only file system"
    assert os_error_line(OSError(errno.ENOSPC, "No space left on device")) == "no space left on the device (disk full)"
