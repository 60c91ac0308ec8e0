"""The output folder: nothing is written over an input, outputs appear atomically, an earlier
build survives any failure, and leftovers of killed builds are removed by the next build.

A build writes into `OUT/.amct-staging-*/` and renames each finished target folder into
place at the end. The staging folder records its owner (host, pid, process start time, boot
id) in `.owner.json`, so a later build can tell a folder of a dead build (removed, restoring
an earlier build it had moved aside) from one of a live concurrent build (left alone).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

from amct_targets.errors import OutputError
from amct_targets.safe_io import read_text

STAGING_PREFIX = ".amct-staging-"
OWNER_FILE = ".owner.json"
OLD_PREFIX = ".old-"
# A staging folder without an owner file comes from a build killed within microseconds of
# creating it, or from a version of the tool that wrote none; after a day it is stale.
UNMARKED_STALE_SECONDS = 24 * 3600


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def refuse_overlap(inputs: Mapping[str, object], out: str | os.PathLike,
                   targets: Iterable[str]) -> None:
    """An OutputError if an input file or folder and the output folder overlap: an input
    inside a target folder this build replaces (or inside a staging folder), an output
    folder inside an input, or the same path. `inputs`: {label: path}; non-paths are skipped."""
    out_path = Path(out)
    resolved_out = out_path.resolve()
    replaced = [resolved_out / name for name in targets]
    for label, source in inputs.items():
        if not isinstance(source, (str, os.PathLike)):
            continue
        resolved = Path(source).resolve()
        detail = None
        if resolved == resolved_out:
            detail = "they are the same path"
        elif resolved in resolved_out.parents:
            detail = f"the output folder would be written inside the {label}"
        else:
            for folder in replaced:
                if _inside(resolved, folder):
                    detail = (f"the {label} lies inside {out_path / folder.name}, which this "
                              "build replaces")
                    break
            if detail is None and resolved_out in resolved.parents and resolved.relative_to(
                    resolved_out).parts[0].startswith(STAGING_PREFIX):
                detail = f"the {label} lies inside a staging folder of {out_path}"
        if detail:
            raise OutputError(f"--output {out_path} overlaps the {label} {source}: {detail}; "
                              "choose an output folder that neither contains the input nor "
                              "lies inside it")


def make_output_dir(out: Path) -> list[Path]:
    """Create `out` and missing parents; return what was created (to undo on failure)."""
    created: list[Path] = []
    for folder in reversed([out, *out.parents]):
        if folder.exists():
            if not folder.is_dir():
                raise OutputError(f"{out}: cannot create the output folder: {folder} is a file; "
                                  "choose another with --output")
            continue
        try:
            folder.mkdir()
        except OSError as exc:
            remove_created(created)
            raise OutputError(f"{out}: cannot create the output folder ({exc.strerror}); "
                              "choose another with --output") from None
        created.append(folder)
    return created


def remove_created(created: list[Path]) -> None:
    for folder in reversed(created):
        with contextlib.suppress(OSError):
            folder.rmdir()


# --- ownership of staging folders ---------------------------------------------------------

def _read_first_line(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as stream:
            return stream.readline().strip()
    except OSError:
        return None


def _process_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) from /proc, or None where unavailable."""
    line = _read_first_line(f"/proc/{pid}/stat")
    if not line or ")" not in line:
        return None
    fields = line.rsplit(")", 1)[1].split()  # the command name may hold spaces and ')'
    return (fields[0], fields[19]) if len(fields) > 19 else None


@dataclass(frozen=True)
class Owner:
    """The process that owns a staging folder."""

    host: str
    pid: int
    start: str | None       # process start time, tells a reused pid apart
    boot_id: str | None     # tells a pid of an earlier boot apart

    @classmethod
    def current(cls) -> "Owner":
        stat = _process_stat(os.getpid())
        return cls(socket.gethostname(), os.getpid(), stat[1] if stat else None,
                   _read_first_line("/proc/sys/kernel/random/boot_id"))

    def is_dead(self) -> bool:
        """True only when certain: same host, and the process is gone, a zombie, or another
        process that reuses the pid. Builds on other hosts sharing the folder are alive."""
        here = Owner.current()
        if self.host != here.host:
            return False
        if self.boot_id and here.boot_id and self.boot_id != here.boot_id:
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # exists, owned by another user
        stat = _process_stat(self.pid)
        if stat is None:
            return False
        state, start = stat
        return state in ("Z", "X") or (self.start is not None and start != self.start)


def _write_owner(staging: Path) -> None:
    partial = staging / f"{OWNER_FILE}.partial"
    partial.write_text(json.dumps(asdict(Owner.current())) + "\n", encoding="utf-8")
    os.replace(partial, staging / OWNER_FILE)  # readers see the whole record or none


def _owner_of(staging: Path) -> Owner | None:
    try:  # read as any user file: a FIFO planted as the record must not hang the build
        data = json.loads(read_text(staging / OWNER_FILE, "staging owner record", OutputError,
                                    1 << 16))
        return Owner(str(data["host"]), int(data["pid"]), data.get("start"),
                     data.get("boot_id"))
    except (OutputError, ValueError, KeyError, TypeError):
        return None


def create_staging(out: Path) -> Path:
    """A new staging folder inside `out`, marked with this process as its owner."""
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    try:
        _write_owner(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def _is_stale(staging: Path) -> bool:
    owner = _owner_of(staging)
    if owner is not None:
        return owner.is_dead()
    try:
        return time.time() - staging.stat().st_mtime > UNMARKED_STALE_SECONDS
    except OSError:
        return False


def remove_stale_staging(out: Path, progress: Callable[[str], None] = lambda m: None
                         ) -> list[Path]:
    """Remove the staging folders of dead builds in `out`; returns those removed.

    A dead build may have moved an earlier target folder aside (`.old-NAME`) just before it
    was killed; when `out/NAME` is missing, that folder is put back first."""
    removed = []
    try:
        candidates = sorted(p for p in out.iterdir()
                            if p.name.startswith(STAGING_PREFIX) and p.is_dir()
                            and not p.is_symlink())
    except OSError:
        return removed
    for staging in candidates:
        if not _is_stale(staging):
            continue
        with contextlib.suppress(OSError):
            for old in staging.iterdir():
                final = out / old.name[len(OLD_PREFIX):]
                if old.name.startswith(OLD_PREFIX) and not os.path.lexists(final):
                    os.replace(old, final)
                    progress(f"restored {final} left aside by a build that was killed")
        shutil.rmtree(staging, ignore_errors=True)
        if not staging.exists():
            removed.append(staging)
            progress(f"removed {staging.name}, left by a build that was killed")
    return removed


def replace_targets(staging: Path, out: Path, names: Iterable[str]) -> None:
    """Move each finished `staging/NAME` to `out/NAME`, the earlier folder aside into
    staging. If any rename fails, every one already done is undone."""
    undo: list[tuple[Path, Path]] = []
    try:
        for name in names:
            final, new, old = out / name, staging / name, staging / f"{OLD_PREFIX}{name}"
            if os.path.lexists(final):
                os.replace(final, old)
                undo.append((old, final))
            os.replace(new, final)
            undo.append((final, new))
    except BaseException:
        for source, target in reversed(undo):
            with contextlib.suppress(OSError):
                os.replace(source, target)
        raise


# --- write failures ---------------------------------------------------------------------------

_WRITE_FAILURES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "a file exceeds the file size limit (ulimit -f) or the file system's maximum",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def is_write_failure(exc: BaseException, out: Path) -> bool:
    """An OSError that means the build output cannot be written: out of space or over a
    size limit anywhere, or refused (read-only, permissions) for a file inside `out`."""
    if not isinstance(exc, OSError) or exc.errno not in _WRITE_FAILURES:
        return False
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    return bool(exc.filename) and _inside(Path(exc.filename).resolve(), out.resolve())


def _size(count: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def write_failure(exc: OSError, out: Path, needed: int) -> OutputError:
    """One message for an output that could not be written: the folder, the cause, and
    what to free (`needed`: about how many bytes the build writes)."""
    cause = _WRITE_FAILURES.get(exc.errno, exc.strerror or "write error")
    where = ""
    if exc.filename and not _inside(Path(exc.filename).resolve(), out.resolve()):
        where = f" (writing {exc.filename})"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = f"{_size(shutil.disk_usage(out).free)} free"
        except OSError:
            free = "free space unknown"
        todo = (f"free at least {_size(needed)} on the file system holding {out} ({free}) "
                "or choose another folder with --output")
    elif exc.errno == errno.EFBIG:
        todo = f"raise the limit or choose another folder with --output (about {_size(needed)})"
    else:
        todo = "choose a writable folder with --output"
    return OutputError(f"{out}: cannot write the build output{where}: {cause}; {todo}; "
                       "earlier builds in it are unchanged")


# --- SIGTERM ----------------------------------------------------------------------------------

class Terminated(KeyboardInterrupt):
    """SIGTERM arrived during a build; raised so the build cleans up as on Ctrl-C."""


@contextlib.contextmanager
def cleanup_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` (so `finally`/`except` blocks remove
    the staging folder); when the block is left, the process still ends by SIGTERM, as it
    would have. That holds even where TensorFlow turned the exception into one of its own
    (a signal caught inside a callback it runs): the signal is remembered, not the exception.

    Only where SIGTERM has its default action and in the main thread: a handler the
    application installed itself is left alone."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return
    received: list[int] = []

    def raise_terminated(signum, frame):
        received.append(signum)
        if len(received) == 1:  # a second SIGTERM must not interrupt the clean-up
            raise Terminated()

    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if received:
            os.kill(os.getpid(), signal.SIGTERM)
