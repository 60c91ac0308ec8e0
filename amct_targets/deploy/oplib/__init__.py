"""Real TensorFlow ops for the op types of an AMCT deploy graph (AscendQuant,
AscendWeightQuant, AscendDequant, AscendAntiQuant, FastSoftmax), built at first use.

Like AMCT's own op library, the CPU kernels ship as C++ source (`ascend_ops.cc`) and are
compiled against the installed TensorFlow's headers by the system C++ compiler (`CXX`, else
`g++`) the first time `load_ascend_op_library()` is called. The shared library is cached in

    $AMCT_TARGETS_CACHE_DIR/oplib/<tf version>-<hash of source, compiler and flags>/
    (default base: $XDG_CACHE_HOME/amct-targets, else ~/.cache/amct-targets)

built under a file lock into a temporary file that is renamed into place, so concurrent
processes build it once and never load a half-written file. After loading, stock TensorFlow
imports and runs a deploy .pb directly (`tf.compat.v1.import_graph_def` + `Session.run`).

Nothing here runs at package import. When no compiler works, the function warns once (one
line, logger `amct_targets.deploy.oplib`) and returns None: `amct_targets.load_simulation`
still runs deploy graphs through its stock-op expansion, which computes the same numbers.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import subprocess
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Iterator

SOURCE = Path(__file__).with_name("ascend_ops.cc")
LIBRARY_NAME = "libamct_ascend_ops.so"
OP_TYPES = ("AscendQuant", "AscendWeightQuant", "AscendDequant", "AscendAntiQuant",
            "FastSoftmax")
CACHE_DIR_ENV = "AMCT_TARGETS_CACHE_DIR"
COMPILER_ENV = "CXX"
DEFAULT_COMPILER = "g++"
# -ffp-contract=off: every float32 step rounds on its own, as in the NumPy references (an FMA
# would round a multiply-add once and break bit-exactness).
OPTIMIZE_FLAGS = ("-O2", "-shared", "-fPIC", "-ffp-contract=off")
# A compile of the TF headers takes about a minute on one core; a compiler that is still
# running after this is considered not to work.
BUILD_TIMEOUT_SECONDS = 1800

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpLibraryBuild:
    """How the library is compiled here, and the cache folder that this fixes."""

    compiler: tuple[str, ...]        # CXX split like a shell word list, e.g. ("ccache", "g++")
    compile_flags: tuple[str, ...]   # TensorFlow's include path, ABI and C++ standard
    link_flags: tuple[str, ...]      # libtensorflow_framework
    tf_version: str
    cache_root: Path

    @property
    def key(self) -> str:
        """Hash of everything that changes the binary: source, compiler, flags."""
        digest = hashlib.sha256(SOURCE.read_bytes())
        digest.update("\0".join(self.compiler + OPTIMIZE_FLAGS + self.compile_flags
                                + self.link_flags).encode())
        return digest.hexdigest()[:16]

    @property
    def directory(self) -> Path:
        return self.cache_root / "oplib" / f"{self.tf_version}-{self.key}"

    @property
    def library(self) -> Path:
        return self.directory / LIBRARY_NAME

    def command(self, output: Path) -> list[str]:
        return [*self.compiler, *OPTIMIZE_FLAGS, *self.compile_flags, str(SOURCE),
                "-o", str(output), *self.link_flags]


class OpLibraryUnavailable(Exception):
    """The library could not be built or loaded here (no compiler, failed compile, ...)."""


def cache_root() -> Path:
    """The base cache folder: AMCT_TARGETS_CACHE_DIR, else the XDG cache folder."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "amct-targets"


def current_build() -> OpLibraryBuild:
    """The build for this TensorFlow, this compiler (CXX) and this cache folder."""
    import tensorflow as tf

    compiler = tuple(shlex.split(os.environ.get(COMPILER_ENV) or DEFAULT_COMPILER))
    return OpLibraryBuild(compiler=compiler or (DEFAULT_COMPILER,),
                          compile_flags=tuple(tf.sysconfig.get_compile_flags()),
                          link_flags=tuple(tf.sysconfig.get_link_flags()),
                          tf_version=tf.__version__, cache_root=cache_root())


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An advisory lock on `lock_path` held by this process (blocks until free). Without
    fcntl (not POSIX) there is no lock; the rename still keeps half-written files out."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_op_library(build: OpLibraryBuild) -> Path:
    """The cached library, compiled first if absent. Raises OpLibraryUnavailable."""
    if build.library.is_file():
        return build.library
    try:
        build.directory.mkdir(parents=True, exist_ok=True)
        with _exclusive(build.directory / ".lock"):
            if build.library.is_file():        # another process built it while we waited
                return build.library
            fd, tmp_name = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=build.directory)
            os.close(fd)
            tmp = Path(tmp_name)
            try:
                _compile(build, tmp)
                os.replace(tmp, build.library)
            finally:
                tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise OpLibraryUnavailable(
            f"cannot build the Ascend op library with compiler '{shlex.join(build.compiler)}': "
            f"cannot write its cache folder {build.directory} ({exc.strerror or exc})") from exc
    return build.library


def _compile(build: OpLibraryBuild, output: Path) -> None:
    command = build.command(output)
    log = build.directory / "build.log"
    cannot = f"cannot build the Ascend op library with compiler '{shlex.join(build.compiler)}'"
    try:
        run = subprocess.run(command, capture_output=True, text=True,
                             timeout=BUILD_TIMEOUT_SECONDS)
    except FileNotFoundError as exc:
        raise OpLibraryUnavailable(f"{cannot} (not found)") from exc
    except subprocess.TimeoutExpired as exc:
        raise OpLibraryUnavailable(f"{cannot} (still running after {BUILD_TIMEOUT_SECONDS} s)") \
            from exc
    except OSError as exc:  # found but not executable, ...
        raise OpLibraryUnavailable(f"{cannot} ({exc.strerror or exc})") from exc
    log.write_text(f"$ {shlex.join(command)}\n{run.stdout}{run.stderr}"
                   f"exit status {run.returncode}\n")
    if run.returncode != 0:
        raise OpLibraryUnavailable(f"{cannot} (exit status {run.returncode}, log: {log})")
    (build.directory / "build.json").write_text(json.dumps(
        {"command": command, "tf_version": build.tf_version}, indent=1) + "\n")


_state_lock = threading.Lock()
_loaded: ModuleType | None = None
_unavailable = False  # set once a build or load failed: warn once, never retry


def load_ascend_op_library() -> ModuleType | None:
    """Register the five op types with this process's TensorFlow and return the op module
    (`tf.load_op_library`'s result), building the library first if it is not cached.
    Returns None, with one warning per process, when it cannot be built or loaded here.
    Calling it again returns the same module (or None) without building or loading again."""
    global _loaded, _unavailable
    with _state_lock:
        if _loaded is not None or _unavailable:
            return _loaded
        import tensorflow as tf

        build = current_build()
        try:
            path = build_op_library(build)
            try:
                module = tf.load_op_library(str(path))
            except tf.errors.OpError as exc:   # undefined symbol, ops already registered
                detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise OpLibraryUnavailable(
                    f"cannot load the Ascend op library {path} built with compiler "
                    f"'{shlex.join(build.compiler)}' ({detail})") from exc
        except OpLibraryUnavailable as exc:
            _unavailable = True
            logger.warning("amct-targets: %s; Ascend ops in deploy graphs run through the "
                           "stock-op expansion of amct_targets.load_simulation instead", exc)
            return None
        _loaded = module
        return module


__all__ = ["OP_TYPES", "OpLibraryBuild", "OpLibraryUnavailable", "build_op_library",
           "cache_root", "current_build", "load_ascend_op_library"]
