"""The run dir (or sweep dir) of one invocation: claimed before Hydra writes, released or undone after.

The rule this module keeps: the runner removes only what the same invocation created. Before Hydra
starts, `RunDirClaim` records which of the dir and its parents exist and what the dir holds, then locks
it (an advisory `flock`, which the kernel drops when the process dies, so a killed run never leaves the
dir locked). If the run fails on the user's mistake, `undo` removes exactly the entries this invocation
added and puts back the `.hydra/` files Hydra rewrote; a dir that existed before is never removed.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from runner.errors import UserError

LOCK_NAME = ".runner.lock"
RUN_FILES = ("metrics.jsonl", "summary.json", "checkpoints")  # what makes a dir hold a run


def holds_run(path: Path) -> str | None:
    """The first file that shows `path` holds an earlier run, or None."""
    return next((name for name in RUN_FILES if (path / name).exists()), None)


def has_checkpoint(run_dir: Path) -> bool:
    """Whether a run dir holds at least one complete (orbax-finalized) checkpoint, without opening it."""
    directory = Path(run_dir) / "checkpoints"
    return directory.is_dir() and any(p.name.isdigit() and (p / "_CHECKPOINT_METADATA").exists()
                                      for p in directory.iterdir())


class RunDirClaim:
    """One invocation's claim on its output dir: what existed before, and the lock while it runs."""

    def __init__(self, path: Path, key: str):
        self.key = key  # the override that names the dir, for messages
        self.path = Path(path).absolute()
        _check_usable(self.path, key)
        self.existed = self.path.is_dir()
        self.entries_before = set(os.listdir(self.path)) if self.existed else set()
        hydra_dir = self.path / ".hydra"
        self.hydra_before = {p.name: p.read_bytes() for p in hydra_dir.iterdir() if p.is_file()} \
            if hydra_dir.is_dir() else {}
        self.created_parents: list[Path] = []
        self._lock_fd: int | None = None

    def lock(self) -> None:
        """Create the dir if needed and take its lock; UserError if another runner process holds it."""
        missing = [p for p in [self.path, *self.path.parents] if not p.exists()]
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self.created_parents = [p for p in missing if p != self.path]
            fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"{self.key}: cannot write {self.path} ({e.strerror}); "
                            "valid: a directory you can write to") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"{self.key}: {self.path} is in use by another runner process (pid {owner}); "
                            "wait for it to end, or choose another dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def release(self) -> None:
        """Drop the lock and its file (the run's own files stay)."""
        if self._lock_fd is None:
            return
        (self.path / LOCK_NAME).unlink(missing_ok=True)
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)
        self._lock_fd = None

    def undo(self) -> None:
        """Remove what this invocation added to the dir, restore the `.hydra/` files it rewrote."""
        self.release()
        if not self.existed:
            shutil.rmtree(self.path, ignore_errors=True)
            for parent in self.created_parents:  # innermost first; only if nothing else arrived meanwhile
                if parent.is_dir() and not any(parent.iterdir()):
                    parent.rmdir()
            return
        for name in set(os.listdir(self.path)) - self.entries_before:
            target = self.path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
        hydra_dir = self.path / ".hydra"
        if ".hydra" in self.entries_before:
            for p in hydra_dir.iterdir() if hydra_dir.is_dir() else ():
                if p.is_file() and p.name not in self.hydra_before:
                    p.unlink()
            for name, data in self.hydra_before.items():
                (hydra_dir / name).write_bytes(data)


def _check_usable(path: Path, key: str) -> None:
    if str(path) in ("", "."):
        return
    if path.exists() and not path.is_dir():
        raise UserError(f"{key}: {path} is a file; valid: a directory, new or existing")
    existing = next(p for p in [path, *path.parents] if p.exists())
    if not existing.is_dir():
        raise UserError(f"{key}: {existing} is a file, so {path} cannot be made; valid: a directory path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{key}: cannot write in {existing}; valid: a directory you can write to")
