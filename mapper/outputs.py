"""Where mapper writes, and the rule that keeps it from destroying anything it did not write.

Output directories (`compile -o`, `study -o`):
- everything is written to a temporary directory beside OUT first, and moved into place only
  once the whole result is complete, so OUT never holds half a result;
- OUT is taken when it does not exist, is empty, or holds an earlier mapper result, which a
  marker file (`MARKER`, listing the files mapper wrote) identifies;
- any other non-empty directory is refused (exit 2) unless `force`, and even then only files
  are added: a file mapper did not write is never removed or overwritten;
- the directory itself is never removed or renamed once it exists, so its permissions,
  owner and a shell sitting in it are kept; a new one gets the user's umask;
- installs into one parent directory are serialized with a lock on that directory, so two
  concurrent compiles into one OUT leave one complete result or the other, never a mix.

Single output files (`--csv`, `arena solve -o`, `moe place -o`, ...) follow the same rule:
replaced only when the existing file is recognisably what that command writes, else refused
unless `force`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mapper import __version__
from mapper.errors import UserError

MARKER = ".mapper-output.json"
_MARKER_KIND = "mapper-output"

DirState = Literal["missing", "empty", "ours", "foreign"]


@dataclass(frozen=True)
class DirInspection:
    """What an output directory holds now: its state, mapper's earlier files, the others."""

    state: DirState
    ours: frozenset[str]
    foreign: tuple[str, ...]


def _read_marker(directory: Path) -> frozenset[str] | None:
    """The files an earlier mapper run recorded in `directory`, or None without a valid marker."""
    try:
        data = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("kind") != _MARKER_KIND:
        return None
    files = data.get("files")
    if not isinstance(files, list):
        return None
    # Only plain names inside the directory: a marker must never point mapper elsewhere.
    return frozenset(name for name in files if isinstance(name, str) and name
                     and "/" not in name and "\\" not in name and name not in (".", ".."))


def inspect_output_dir(out_dir: Path) -> DirInspection:
    """Classify `out_dir`: missing, empty, an earlier mapper result, or someone else's."""
    if not out_dir.exists():
        return DirInspection("missing", frozenset(), ())
    if not out_dir.is_dir():
        raise UserError(f"output path {str(out_dir)!r} exists and is not a directory: give -o a "
                        "directory (it is created if missing)")
    try:
        present = sorted(entry.name for entry in os.scandir(out_dir))
    except OSError as error:
        raise UserError(f"cannot read the output directory {str(out_dir)!r}: "
                        f"{error.strerror}") from None
    if not present:
        return DirInspection("empty", frozenset(), ())
    recorded = _read_marker(out_dir)
    if recorded is None:
        return DirInspection("foreign", frozenset(), tuple(present))
    ours = frozenset(name for name in recorded if (out_dir / name).is_file()) | {MARKER}
    foreign = tuple(name for name in present if name not in ours)
    return DirInspection("ours", ours, foreign)


def _refusal(out_dir: Path, inspection: DirInspection) -> UserError:
    shown = ", ".join(inspection.foreign[:5]) + (", ..." if len(inspection.foreign) > 5 else "")
    return UserError(f"output directory {str(out_dir)!r} is not empty and holds no earlier mapper "
                     f"result ({shown}); mapper never deletes files it did not write: choose a "
                     "new or empty directory, or pass --force to add mapper's files beside them")


def check_output_dir(out_dir: str | Path, force: bool = False) -> None:
    """Fail early (exit 2) when `out_dir` could not take a result, before any slow work."""
    out = Path(out_dir).absolute()
    inspection = inspect_output_dir(out)
    if inspection.state == "foreign" and not force:
        raise _refusal(out, inspection)
    parent = out.parent if inspection.state == "missing" else out
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"cannot write the output directory {str(out)!r}: {str(probe)!r} is not "
                        "writable")


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """An exclusive lock on `directory` itself (no lock file is left behind)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock, the renames stay atomic
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _new_sibling(parent: Path, label: str) -> Path:
    """A fresh directory in `parent`, created with the user's umask (not 0700 like mkdtemp)."""
    for _ in range(100):
        candidate = parent / f".{label}.tmp-{uuid.uuid4().hex[:12]}"
        try:
            candidate.mkdir(mode=0o777)
        except FileExistsError:
            continue
        return candidate
    raise UserError(f"cannot create a temporary directory in {str(parent)!r}")


def _marker_text(files: list[str]) -> str:
    return json.dumps({"kind": _MARKER_KIND, "mapper_version": __version__,
                       "files": sorted(set(files))}, indent=1) + "\n"


def _write_marker(directory: Path, files: list[str]) -> None:
    temporary = directory / f"{MARKER}.tmp-{uuid.uuid4().hex[:12]}"
    temporary.write_text(_marker_text(files))
    os.replace(temporary, directory / MARKER)


def _install(tmp: Path, out_dir: Path, force: bool) -> None:
    """Move the complete result in `tmp` into `out_dir` under the rule (lock held)."""
    written = sorted(entry.name for entry in os.scandir(tmp) if entry.name != MARKER)
    inspection = inspect_output_dir(out_dir)
    if inspection.state == "missing":
        _write_marker(tmp, written)
        try:
            tmp.rename(out_dir)
            return
        except OSError:
            # Created meanwhile by something that does not take our lock: inspect it again.
            inspection = inspect_output_dir(out_dir)
            (tmp / MARKER).unlink(missing_ok=True)
    if inspection.state == "foreign" and not force:
        raise _refusal(out_dir, inspection)
    clashes = [name for name in written
               if (out_dir / name).exists() and name not in inspection.ours]
    if clashes:
        raise UserError(f"output directory {str(out_dir)!r} already holds {', '.join(clashes)}, "
                        "which mapper did not write; mapper never overwrites such files: move "
                        "them or choose another directory")
    earlier = sorted(inspection.ours - {MARKER})
    # The marker first lists old and new files, so an interruption leaves nothing unowned.
    _write_marker(out_dir, [*earlier, *written])
    for name in written:
        os.replace(tmp / name, out_dir / name)
    for name in earlier:
        if name not in written:
            (out_dir / name).unlink(missing_ok=True)
    _write_marker(out_dir, written)


def write_output_dir(out_dir: str | Path, write: Callable[[Path], None], force: bool = False,
                     label: str | None = None) -> Path:
    """Call `write(tmp)` on a fresh temporary directory, then install it as `out_dir`.

    Nothing reaches `out_dir` if `write` raises; the rule of this module decides what may be
    replaced. Returns the absolute output directory.
    """
    out = Path(out_dir).absolute()
    check_output_dir(out, force)
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create the output directory's parent {str(parent)!r}: "
                        f"{error.strerror}") from None
    tmp = _new_sibling(parent, label or out.name or "mapper")
    try:
        write(tmp)
        with _directory_lock(parent):
            _install(tmp, out, force)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def check_output_file(path: str | Path, *, force: bool = False,
                      ours: Callable[[Path], bool] | None = None, what: str = "output") -> None:
    """Fail early (exit 2) when `path` could not be written under the rule."""
    target = Path(path).absolute()
    if target.is_dir():
        raise UserError(f"{what} path {str(path)!r} is a directory; name a file")
    if target.exists() and not force and not (ours is not None and _safe(ours, target)):
        raise UserError(f"{what} file {str(path)!r} already exists and is not a file this command "
                        "wrote; mapper never overwrites such files: choose another name, or pass "
                        "--force to replace it")
    if not target.parent.is_dir():
        raise UserError(f"cannot write {str(path)!r}: the directory {str(target.parent)!r} does "
                        "not exist")


def write_output_file(path: str | Path, data: str | bytes, *, force: bool = False,
                      ours: Callable[[Path], bool] | None = None, what: str = "output") -> None:
    """Write `data` to `path` through a temporary file beside it (no half file is ever left).

    An existing file is replaced only when `ours(path)` recognises it as this command's
    output, or with `force`; anything else is refused with exit 2.
    """
    check_output_file(path, force=force, ours=ours, what=what)
    target = Path(path).absolute()
    parent = target.parent
    temporary = parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        if isinstance(data, str):
            temporary.write_text(data)
        else:
            temporary.write_bytes(data)
        os.replace(temporary, target)
    except OSError as error:
        raise UserError(f"cannot write {str(path)!r}: {error.strerror}") from None
    finally:
        temporary.unlink(missing_ok=True)


def _safe(ours: Callable[[Path], bool], path: Path) -> bool:
    try:
        return bool(ours(path))
    except Exception:  # an unreadable or odd file is simply not recognised as ours
        return False


def json_with_keys(*keys: str) -> Callable[[Path], bool]:
    """A recogniser for JSON outputs: an object holding every one of `keys`."""
    def recognise(path: Path) -> bool:
        if path.stat().st_size > 256 * 2**20:
            return False
        data = json.loads(path.read_text())
        return isinstance(data, dict) and all(key in data for key in keys)
    return recognise


def npz_with_arrays(*names: str) -> Callable[[Path], bool]:
    """A recogniser for .npz outputs holding every one of the arrays `names`."""
    def recognise(path: Path) -> bool:
        import zipfile

        with zipfile.ZipFile(path) as archive:
            members = {member.removesuffix(".npy") for member in archive.namelist()}
        return all(name in members for name in names)
    return recognise


def first_line_is(header_prefix: str) -> Callable[[Path], bool]:
    """A recogniser for text outputs whose first line starts with `header_prefix`."""
    def recognise(path: Path) -> bool:
        with path.open("r", errors="replace") as handle:
            return handle.readline().startswith(header_prefix)
    return recognise
