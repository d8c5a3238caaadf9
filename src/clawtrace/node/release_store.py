"""Releases installed on the node: ``<spool dir>/releases/<id>/`` and which one runs.

Each release the node agent runs is written out as files (its prompts,
tool hooks and policy, at the paths its manifest names) into a directory
named by its id, next to ``<id>.json``, the release as the gateway sent it
(what a restarted node agent verifies and starts again without asking the
gateway). ``<spool dir>/release.json`` says which release runs.

A directory appears whole or not at all (written under a temporary name,
then renamed), and is read-only once there: a release is immutable, and the
agent process, which runs in it, has no business changing its own hooks.
The running release and the one before it are kept; older ones are pruned.
Secret values are never written here: a release holds references only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final

import msgspec

from clawtrace.envs.release import Release, ReleaseError, path_problem, verify_release

log = logging.getLogger("clawtrace.node.release_store")

RELEASES_DIR: Final = "releases"
CURRENT_FILE: Final = "release.json"
# The running release and the previous one (what a rollback by hand would want).
KEEP: Final = 2
_RELEASE_ID: Final = re.compile(r"^[0-9a-f]{64}$")
# Read-only for the owner (and its group): r--r----- files, r-xr-x--- directories.
_FILE_MODE: Final = 0o440
_DIR_MODE: Final = 0o550


class InstallError(Exception):
    """A release that cannot be written to or read back from disk; the message says what to do."""


@dataclass(frozen=True, slots=True)
class CurrentRelease:
    id: str
    ref: str
    since: float


def is_release_id(value: object) -> bool:
    return isinstance(value, str) and _RELEASE_ID.match(value) is not None


class ReleaseStore:
    def __init__(self, spool_dir: Path) -> None:
        self.spool_dir = spool_dir
        self.directory = spool_dir / RELEASES_DIR

    def path_of(self, release_id: str) -> Path:
        return self.directory / release_id

    # --- which release runs -----------------------------------------------------

    def current(self) -> CurrentRelease | None:
        """The release that ran last, if one did and its record is readable."""
        path = self.spool_dir / CURRENT_FILE
        try:
            data = json.loads(path.read_text())
            current = CurrentRelease(id=data["id"], ref=str(data.get("ref", "")), since=float(data["since"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring %s, which is not a release record (%s)", path, exc)
            return None
        if not is_release_id(current.id):
            log.warning("ignoring %s: %r is not a release id", path, current.id)
            return None
        return current

    def set_current(self, release: Release) -> None:
        record = {"id": release.id, "ref": release.ref, "since": time.time()}
        _write_atomically(self.spool_dir / CURRENT_FILE, json.dumps(record).encode())

    # --- installing ------------------------------------------------------------------

    def install(self, release: Release) -> Path:
        """Write ``release`` out (if it is not already there, intact); its directory back.

        Blocking file I/O: the node agent calls it in a thread.
        """
        if not is_release_id(release.id):
            raise InstallError(f"{release.id!r} is not a release id (64 hex digits)")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            _write_atomically(self.directory / f"{release.id}.json", msgspec.json.encode(release))
            target = self.path_of(release.id)
            if target.is_dir():
                if _matches(target, release):
                    return target
                log.warning("release directory %s was changed on disk; writing it again", target)
            staging = self.directory / f".tmp-{release.short_id}-{uuid.uuid4().hex[:8]}"
            try:
                _write_files(staging, release)
                if target.exists():
                    aside = self.directory / f".old-{release.short_id}-{uuid.uuid4().hex[:8]}"
                    os.rename(target, aside)
                    _remove(aside)
                os.rename(staging, target)
            finally:
                if staging.exists():
                    _remove(staging)
            _sync_dir(self.directory)
            return target
        except OSError as exc:
            raise InstallError(
                f"cannot write release {release.short_id} to {self.directory}: {exc.strerror or exc}; "
                "check free space and that the node agent's user can write its spool directory"
            ) from None

    def load(self, release_id: str) -> tuple[Release, Path]:
        """A release installed by an earlier run, checked again (and rewritten if its files were changed)."""
        path = self.directory / f"{release_id}.json"
        try:
            release = msgspec.json.decode(path.read_bytes(), type=Release)
        except FileNotFoundError:
            raise InstallError(
                f"{path} is missing: the release must be fetched from the gateway again"
            ) from None
        except OSError as exc:
            raise InstallError(f"cannot read {path}: {exc.strerror or exc}") from None
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise InstallError(f"{path} is not a release ({exc}): it must be fetched again") from None
        if release.id != release_id:
            raise InstallError(f"{path} holds release {release.short_id}, not {release_id[:12]}")
        try:
            verify_release(release)
        except ReleaseError as exc:
            raise InstallError(f"{path} was changed on disk: {'; '.join(exc.problems)}") from None
        return release, self.install(release)

    def prune(self, keep: set[str]) -> None:
        """Remove every installed release but ``keep`` (and leftovers of interrupted installs)."""
        try:
            entries = list(self.directory.iterdir())
        except OSError:
            return
        for entry in entries:
            name = entry.name
            release_id = name.removesuffix(".json")
            if is_release_id(release_id) and release_id in keep:
                continue
            if not (is_release_id(release_id) or name.startswith((".tmp-", ".old-"))):
                continue  # not ours: leave it
            try:
                if entry.is_dir() and not entry.is_symlink():
                    _remove(entry)
                else:
                    entry.unlink()
            except OSError as exc:
                log.warning("could not remove old release %s: %s", entry, exc)


def _write_files(staging: Path, release: Release) -> None:
    staging.mkdir()
    root = staging.resolve()
    for rel, text in release.files.items():
        problem = path_problem(rel)
        target = (root / rel).resolve()
        if problem is not None or not target.is_relative_to(root) or target == root:
            raise InstallError(f"release {release.short_id}: refusing file {rel!r}: {problem or 'outside'}")
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "xb") as f:
            f.write(text.encode("utf-8", "surrogatepass"))
        os.chmod(target, _FILE_MODE)
    for directory, _dirs, _files in os.walk(root, topdown=False):
        os.chmod(directory, _DIR_MODE)


def _matches(target: Path, release: Release) -> bool:
    found: set[str] = set()
    try:
        for directory, _dirs, files in os.walk(target):
            for name in files:
                full = Path(directory) / name
                rel = PurePosixPath(full.relative_to(target).as_posix())
                text = release.files.get(str(rel))
                if (
                    text is None
                    or full.is_symlink()
                    or full.read_bytes() != text.encode("utf-8", "surrogatepass")
                ):
                    return False
                found.add(str(rel))
    except OSError:
        return False
    return found == set(release.files)


def _remove(path: Path) -> None:
    # Installed releases are read-only: make them writable to delete them.
    for directory, _dirs, _files in os.walk(path):
        with contextlib.suppress(OSError):
            os.chmod(directory, stat.S_IRWXU)
    shutil.rmtree(path, ignore_errors=True)


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _sync_dir(path.parent)


def _sync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
