"""A real small filesystem for disk-full tests: a tmpfs mounted in the test (root only; skipped otherwise)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest

PAGE = 4096  # tmpfs hands out whole pages: a file's last page is allocated with its first byte


def mount(path: Path, size: str, remount: bool = False) -> bool:
    # A remount names only the mount point (with a source and -t, mount stacks a second tmpfs on top instead).
    args = ["mount", "-o", f"remount,size={size}", str(path)] if remount else \
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    return subprocess.run(args, capture_output=True).returncode == 0


def unmount(path: Path) -> None:
    for _ in range(3):  # lazily if still busy, so the tmpfs never outlives the test
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
        if str(path) not in Path("/proc/mounts").read_text():
            break


def fill(disk: Path, leave_pages: int = 0) -> Path:
    """Fill the tmpfs at ``disk`` with a file ``disk/filler`` until nothing is left, then give back
    ``leave_pages`` pages. Returns the filler's path."""
    filler = disk / "filler"
    with open(filler, "ab", buffering=0) as f:
        for chunk in (1 << 16, PAGE):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError:
                pass
        f.truncate(max(0, f.seek(0, os.SEEK_END) - leave_pages * PAGE))
    return filler


def free_pages(disk: Path) -> int:
    st = os.statvfs(disk)
    return st.f_bavail * st.f_frsize // PAGE


@contextlib.contextmanager
def small_disk(path: Path, size: str = "2m"):
    """A ``size`` tmpfs mounted at ``path`` (made), unmounted afterwards; the test is skipped unless that works."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir()
    if not mount(path, size):
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield path
    finally:
        unmount(path)


def tmp_files(folder: Path) -> list[str]:
    """Temp files or folders left anywhere under ``folder`` (``*.tmp``)."""
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*.tmp"))
