"""The run dir (or sweep dir) of one invocation: claimed before Hydra writes, released or undone after.

The rule this module keeps: the runner removes only what the same invocation created. Before Hydra
starts, `RunDirClaim` records which of the dir and its parents exist and what the dir holds, then locks
it (an advisory `flock`, which the kernel drops when the process dies, so a killed run never leaves the
dir locked). If the run fails on the user's mistake, `undo` removes exactly the paths this invocation
created (the manifest its writers keep, `note_created`), puts back the `.hydra/` files Hydra rewrote, and removes
the dir only if it made it and nothing else is left there.

A sweep job's dir is named by what the job is, its overrides (`job_dir_name`), not by its position in the
sweep, so a re-launched sweep finds each job's earlier results; a job that failed is re-run afresh after
`clear_run_outputs` takes away the files the runner wrote there, and nothing else.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
from pathlib import Path

from omegaconf import OmegaConf

from runner.errors import UserError

LOCK_NAME = ".runner.lock"
RUN_FILES = ("metrics.jsonl", "summary.json", "checkpoints")  # what makes a dir hold a run
# What a run writes into its run dir besides Hydra's .hydra/: run.py, transfer.py (the final weights and the input
# scaling), handlers.py (the learning-rate trace), loggers.py (csv, tensorboard; mlflow's store is elsewhere),
# lr_find.py. A failed job's summary.json lists what it wrote (`written`); this list is for a job killed before
# its summary (tests/cli/test_sweep_resume.py checks that a run writing most of them writes nothing else).
RUN_OUTPUTS = (*RUN_FILES, "diagnostics.jsonl", "lr_trace.jsonl", "model.safetensors", "input_scaling.json",
               "metrics.csv", "tensorboard", "lr_find.json", "lr_find.png")
JOB_NAME_LIMIT = 200  # characters (ASCII once made safe): below the 255 bytes most file systems allow a name
_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9._=,+\-\[\]@%]")  # '/' nests dirs; spaces, quotes, '*' trip shells


def holds_run(path: Path) -> str | None:
    """The first file that shows `path` holds an earlier run, or None."""
    return next((name for name in RUN_FILES if (path / name).exists()), None)


def job_dir_name(override_dirname: str) -> str:
    """A sweep job's dir name: its overrides as Hydra's `override_dirname` gives them (sorted, so independent of
    the order they were typed in and of the job's position in the sweep), `defaults` for none.

    Where the name had to change (a character unsafe in a dir name, or longer than JOB_NAME_LIMIT), an 8-digit
    hash of the exact overrides is appended, so two different jobs never share a dir.
    """
    if not override_dirname:
        return "defaults"
    safe = _UNSAFE_IN_NAME.sub("_", override_dirname)
    if safe == override_dirname and len(safe) <= JOB_NAME_LIMIT:
        return safe
    digest = hashlib.sha256(override_dirname.encode()).hexdigest()[:8]
    return f"{safe[:JOB_NAME_LIMIT - 9]}-{digest}"


def register_job_dir_resolver() -> None:
    """`${runner.job_dir:${hydra.job.override_dirname}}` in conf/config.yaml's hydra.sweep.subdir.

    Hydra hands registered resolvers to the processes of parallel launchers (joblib, submitit) with its own state.
    """
    if not OmegaConf.has_resolver("runner.job_dir"):
        OmegaConf.register_new_resolver("runner.job_dir", job_dir_name)


# The manifest: for each run dir this process writes in, the paths it created there (not a before/after diff of the
# dir, which would take a file the user saved meanwhile for the run's own). Every writer notes a path before
# creating it: runner/rundir/outputs.py's writers, the checkpoint manager, the loggers' own files.
_manifests: dict[Path, set[Path]] = {}


def track(run_dir: Path) -> None:
    """Start noting what this process creates in `run_dir` (a job's dir), afresh."""
    _manifests[Path(run_dir).absolute()] = set()


def note_created(path: Path) -> None:
    """Call before creating `path`: if it (or a parent below a tracked run dir) does not exist yet, the
    outermost missing one goes into that run dir's manifest."""
    path = Path(path).absolute()
    for root, created in _manifests.items():
        if path != root and path.is_relative_to(root):
            missing = next((p for p in reversed([path, *path.parents]) if p.is_relative_to(root) and p != root
                            and not os.path.lexists(p)), None)
            if missing is not None:
                created.add(missing)


def created_in(run_dir: Path) -> list[Path]:
    """The paths this process created in `run_dir` that are still there, innermost first."""
    made = _manifests.get(Path(run_dir).absolute(), set())
    return sorted((p for p in made if os.path.lexists(p)), key=lambda p: len(p.parts), reverse=True)


def written_names(run_dir: Path) -> list[str]:
    """The entries of `run_dir` this process created, Hydra's and the lock's aside: what a failed job wrote."""
    root = Path(run_dir).absolute()
    return sorted({p.relative_to(root).parts[0] for p in created_in(root)} - {".hydra", LOCK_NAME})


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def clear_run_outputs(run_dir: Path, names: tuple[str, ...] | list[str] = RUN_OUTPUTS) -> list[str]:
    """Remove the entries `names` (what an earlier attempt wrote) from `run_dir`, so a re-run starts afresh;
    anything else there (a user's notes, .hydra/, which Hydra rewrites) stays. Returns the names removed."""
    removed = []
    for name in names:
        if not name or name in (".", "..", ".hydra", LOCK_NAME) or "/" in name:  # a hand-edited list: names only
            continue
        target = Path(run_dir) / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        else:
            continue
        removed.append(name)
    return removed


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
        track(self.path)
        self.existed = self.path.is_dir()
        self.entries_before = set(os.listdir(self.path)) if self.existed else set()
        hydra_dir = self.path / ".hydra"
        self.hydra_before = {p.name: p.read_bytes() for p in hydra_dir.iterdir() if p.is_file()} \
            if hydra_dir.is_dir() else {}
        self.created_parents: list[Path] = []
        self._lock_fd: int | None = None

    def lock(self, wait: bool = False) -> None:
        """Create the dir if needed and take its lock; UserError if another runner process holds it, or with
        `wait`, wait until it is released (two jobs of one sweep with the same overrides share a dir)."""
        missing = [p for p in [self.path, *self.path.parents] if not p.exists()]
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self.created_parents = [p for p in missing if p != self.path]
        except OSError as e:
            raise UserError(f"{self.key}: cannot write {self.path} ({e.strerror}); "
                            "valid: a directory you can write to") from None
        while (fd := self._take_lock(wait)) is None:  # the holder removed the file as it let go: the lock
            continue  # taken was on a file no one else opens any more; take the current one
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _take_lock(self, wait: bool) -> int | None:
        try:
            fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"{self.key}: cannot write {self.path} ({e.strerror}); "
                            "valid: a directory you can write to") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"{self.key}: {self.path} is in use by another runner process (pid {owner}); "
                            "wait for it to end, or choose another dir") from None
        if wait and not _same_file(fd, self.path / LOCK_NAME):
            os.close(fd)
            return None
        return fd

    def holder(self) -> str | None:
        """The pid of another live runner process that holds this dir's lock, or None."""
        try:
            fd = os.open(self.path / LOCK_NAME, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        except BlockingIOError:
            return os.read(fd, 32).decode(errors="replace").strip() or "another process"
        finally:
            os.close(fd)

    def release(self) -> None:
        """Drop the lock and its file (the run's own files stay)."""
        if self._lock_fd is None:
            return
        (self.path / LOCK_NAME).unlink(missing_ok=True)
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)
        self._lock_fd = None

    def undo(self, hydra_paths: tuple[Path, ...] = ()) -> None:
        """Remove what this invocation created in the dir (its manifest, and `hydra_paths`: what Hydra wrote for
        the job, its output subdir and log file, where they did not exist before), restore the `.hydra/` files
        it rewrote; the dir itself and the parents it made go only if nothing else is left in them."""
        self.release()
        hydra_made = [p for p in hydra_paths if Path(p).absolute().is_relative_to(self.path)
                      and Path(p).absolute().relative_to(self.path).parts[:1]
                      and Path(p).absolute().relative_to(self.path).parts[0] not in self.entries_before]
        for path in [*created_in(self.path), *hydra_made]:
            if os.path.lexists(path):
                _remove(path)
        hydra_dir = self.path / ".hydra"
        if ".hydra" in self.entries_before:
            for p in hydra_dir.iterdir() if hydra_dir.is_dir() else ():
                if p.is_file() and p.name not in self.hydra_before:
                    p.unlink()
            for name, data in self.hydra_before.items():
                (hydra_dir / name).write_bytes(data)
        if not self.existed:
            for directory in (self.path, *self.created_parents):  # innermost first; only if left empty
                if directory.is_dir() and not any(directory.iterdir()):
                    directory.rmdir()


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


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
