"""Reading the files a user names, so that no file can hang, exhaust or crash the tool.

Every reader here turns a hostile or broken file into one `AmctError` naming the file:
- only regular files are opened (a FIFO, socket or device such as /dev/zero is refused; the
  open itself is non-blocking, so a FIFO cannot hang it), with a size limit checked first;
- text must be UTF-8;
- YAML goes through the safe loader with a bound on alias expansion and nesting (an alias
  bomb is a few hundred bytes that expand to billions of nodes);
- `.npy` arrays have their header checked against the bytes actually present before any
  memory is allocated, object dtypes are refused, and nothing is unpickled.
"""
from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np
import yaml

from amct_targets.errors import AmctError

ErrorType = Callable[[str], AmctError]

MIB = 1 << 20
CONFIG_MAX_BYTES = 16 * MIB      # build configs and AMCT JSON configs
PROFILE_MAX_BYTES = 1 * MIB      # device profiles (the built-in ones are ~5 KiB)
YAML_MAX_NODES = 1_000_000       # nodes after alias expansion
YAML_MAX_DEPTH = 100             # nesting after alias expansion; real files use < 10
MESSAGE_MAX_CHARS = 300          # instance text quoted in a message
_READ_CHUNK = 16 * MIB
# zlib's deflate cannot expand more than 1032:1; an entry claiming more is forged.
_DEFLATE_MAX_RATIO = 1032
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # an entry first; an empty archive


def short(text: str, limit: int = MESSAGE_MAX_CHARS) -> str:
    """`text` cut to `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def schema_message(error) -> str:
    """`json path: message` of a jsonschema error, never quoting a huge instance in full."""
    return f"{short(error.json_path, 120)}: {short(error.message)}"


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _stat(path: Path, what: str, error: ErrorType, noun: str) -> os.stat_result:
    try:
        return path.stat()
    except FileNotFoundError:
        raise error(f"{path}: no such {noun} (the {what})") from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror})") from None


def require_regular_file(path: str | os.PathLike, what: str, error: ErrorType) -> os.stat_result:
    """The file's stat if `path` is a regular file (symbolic links followed), else one error."""
    path = Path(path)
    info = _stat(path, what, error, "file")
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{path}: is {_kind(info.st_mode)}, not a regular file; give the {what} "
                    "as a regular file")
    return info


def require_file_or_folder(path: str | os.PathLike, what: str, error: ErrorType) -> bool:
    """True for a folder, False for a regular file; anything else (FIFO, device) is an error.

    A folder must hold only regular files and folders too: TensorFlow reading a SavedModel
    would block on a FIFO inside it just the same."""
    path = Path(path)
    info = _stat(path, what, error, "file or folder")
    if stat.S_ISDIR(info.st_mode):
        for folder, _dirs, files in os.walk(path):
            for name in files:
                entry = Path(folder) / name
                try:
                    mode = entry.stat().st_mode
                except OSError:
                    continue  # a dangling link: TensorFlow reports it if it needs the file
                if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                    raise error(f"{entry}: is {_kind(mode)} inside the {what} {path}; it may "
                                "hold only regular files and folders")
        return True
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{path}: is {_kind(info.st_mode)}, not a regular file or folder; give the "
                    f"{what} as a regular file or folder")
    return False


def open_regular(path: str | os.PathLike, what: str, error: ErrorType,
                 max_bytes: int | None = None) -> IO[bytes]:
    """Open a regular file for reading, refusing anything else and files over `max_bytes`.

    The open is non-blocking and the type is checked on the open descriptor, so a FIFO put in
    place between a check and the open cannot hang the tool either."""
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise error(f"{path}: no such file (the {what})") from None
    except OSError as exc:
        require_regular_file(path, what, error)  # a socket cannot be opened: say what it is
        raise error(f"{path}: cannot read the {what} ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{path}: is {_kind(info.st_mode)}, not a regular file; give the {what} "
                        "as a regular file")
        if max_bytes is not None and info.st_size > max_bytes:
            raise error(f"{path}: {info.st_size / MIB:.1f} MiB is too large for a {what} (at "
                        f"most {max_bytes // MIB} MiB)")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | os.PathLike, what: str, error: ErrorType, max_bytes: int) -> bytes:
    with open_regular(path, what, error, max_bytes) as stream:
        try:
            data = stream.read(max_bytes + 1)  # the file may grow after the size check
        except OSError as exc:
            raise error(f"{path}: cannot read the {what} ({exc.strerror})") from None
    if len(data) > max_bytes:
        raise error(f"{path}: too large for a {what} (at most {max_bytes // MIB} MiB)")
    return data


def read_text(path: str | os.PathLike, what: str, error: ErrorType, max_bytes: int) -> str:
    """UTF-8 text of a regular file (a leading byte-order mark is dropped)."""
    data = read_bytes(path, what, error, max_bytes)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise error(f"{path}: line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at "
                    f"offset {exc.start}); save the {what} as UTF-8") from None


def read_json(path: str | os.PathLike, what: str, error: ErrorType,
              max_bytes: int = CONFIG_MAX_BYTES) -> Any:
    text = read_text(path, what, error, max_bytes)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path}: line {exc.lineno} column {exc.colno}: not valid JSON: "
                    f"{exc.msg}") from None
    except (RecursionError, ValueError) as exc:  # nesting too deep; over-long integer literals
        raise error(f"{path}: not usable JSON: {short(str(exc) or type(exc).__name__)}") from None


class _ExpansionLimit(yaml.YAMLError):
    pass


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def check_expansion(root: yaml.Node, max_nodes: int = YAML_MAX_NODES,
                    max_depth: int = YAML_MAX_DEPTH) -> None:
    """Refuse a composed YAML document whose aliases expand past `max_nodes` nodes or
    `max_depth` levels, or refer to themselves. Linear in the composed (unexpanded) size:
    each node's expanded size is computed once."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            active.discard(key)
            children = _children(node)
            size[key] = 1 + sum(size[id(c)] for c in children)
            depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
            if size[key] > max_nodes:
                raise _ExpansionLimit(f"aliases expand to more than {max_nodes} nodes")
            if depth[key] > max_depth:
                raise _ExpansionLimit(f"nested more than {max_depth} levels deep")
            continue
        if key in size:
            continue
        if key in active:
            raise _ExpansionLimit("an alias refers to a node that contains it (a cycle)")
        active.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node))


class BoundedSafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing documents whose alias expansion is out of bounds."""

    max_nodes = YAML_MAX_NODES
    max_depth = YAML_MAX_DEPTH

    def compose_document(self):
        node = super().compose_document()
        check_expansion(node, self.max_nodes, self.max_depth)
        return node


# YAML 1.1 (PyYAML) reads `1e-9` and `3E5` as strings: its float needs a dot. YAML 1.2 and
# JSON read them as numbers, and so does every user who writes `lr: 1e-3`.
BoundedSafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+(?:\.[0-9]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_yaml(text: str, path: str | os.PathLike, what: str, error: ErrorType) -> Any:
    """One YAML (or JSON) document, safely; any problem is one error naming `path`."""
    loader = None
    try:
        loader = BoundedSafeLoader(text)  # the reader checks every character here already
        return loader.get_single_data()
    except _ExpansionLimit as exc:
        raise error(f"{path}: refused: {exc}; write the {what} without such aliases") from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise error(f"{path}: line {line}: not valid YAML: character #x{exc.character:04x} is "
                    "not allowed (a control character)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).strip().split("\n")[0]
        raise error(f"{path}:{where} not valid YAML: {short(problem)}") from None
    except RecursionError:
        raise error(f"{path}: nested too deeply to read (more than {YAML_MAX_DEPTH} "
                    "levels)") from None
    except (ValueError, OverflowError) as exc:  # e.g. timestamp 2021-13-45, 5000-digit integer
        raise error(f"{path}: not valid YAML: a value cannot be read: "
                    f"{short(str(exc).split(chr(10))[0])}") from None
    finally:
        if loader is not None:
            loader.dispose()


# --- .npy arrays ------------------------------------------------------------------------------

def read_npy(stream: IO[bytes], available: int, where: str, error: ErrorType) -> np.ndarray:
    """One `.npy` array from `stream`, which holds `available` bytes from its start.

    The header's shape x item size is checked against the bytes present (and the machine's
    memory) before anything is allocated; object dtypes are refused, nothing is unpickled."""
    from numpy.lib import format as npy_format

    try:
        version = npy_format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(stream)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = npy_format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, EOFError, OSError, SyntaxError, TypeError) as exc:
        raise error(f"{where}: not a readable .npy array ({short(str(exc), 120)})") from None
    if dtype.hasobject:
        raise error(f"{where}: holds Python objects (dtype {short(str(dtype), 80)}); save "
                    "numeric arrays without pickled objects (nothing is unpickled)")
    if dtype.itemsize == 0 or any(d < 0 for d in shape):
        raise error(f"{where}: invalid array header (shape {short(str(shape), 80)}, dtype "
                    f"{short(str(dtype), 80)})")
    count = 1
    for dim in shape:
        count *= dim
    needed = count * dtype.itemsize
    header = stream.tell()
    present = available - header
    if needed > present:
        raise error(f"{where}: the header claims shape {short(str(shape), 80)} of {dtype} "
                    f"({_size(needed)}) but only {_size(max(present, 0))} of data follow; the "
                    "file is truncated or forged")
    memory = _physical_memory()
    if memory and needed > memory:
        raise error(f"{where}: shape {shape} of {dtype} needs {_size(needed)}, more than this "
                    f"machine's {_size(memory)} of memory; use fewer samples")
    flat = np.empty(count, dtype=dtype)
    view = memoryview(flat.view(np.uint8).reshape(-1)) if needed else memoryview(b"")
    position = 0
    try:
        while position < needed:
            chunk = stream.read(min(_READ_CHUNK, needed - position)) or b""
            if not chunk:
                break
            view[position:position + len(chunk)] = chunk
            position += len(chunk)
    except (OSError, EOFError, ValueError) as exc:
        raise error(f"{where}: cannot read the array data ({short(str(exc), 120)})") from None
    if position < needed:
        raise error(f"{where}: truncated: {_size(needed)} of array data expected, "
                    f"{_size(position)} present")
    if fortran:
        return flat.reshape(shape[::-1]).transpose()
    return flat.reshape(shape)


def read_npz_entries(stream: IO[bytes], where: str, error: ErrorType) -> dict[str, np.ndarray]:
    """Every array of an `.npz` (a zip of `.npy` entries), each checked as in `read_npy`."""
    import struct
    import zipfile
    import zlib

    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(stream) as archive:
            for info in archive.infolist():
                name = info.filename
                label = f"{where}: entry '{short(name, 80)}'"
                if info.is_dir():
                    continue
                if not name.endswith(".npy"):
                    raise error(f"{label}: not an .npy array; an .npz holds only arrays")
                if info.compress_type == zipfile.ZIP_STORED:
                    plausible = info.file_size == info.compress_size
                elif info.compress_type == zipfile.ZIP_DEFLATED:
                    plausible = info.file_size <= _DEFLATE_MAX_RATIO * info.compress_size + 1024
                else:
                    raise error(f"{label}: zip compression method {info.compress_type}; NumPy "
                                "writes only stored or deflated entries")
                if not plausible:
                    raise error(f"{label}: claims {_size(info.file_size)} from "
                                f"{_size(info.compress_size)} compressed; the file is forged")
                with archive.open(info) as entry:
                    arrays[name[:-len(".npy")]] = read_npy(entry, info.file_size, label, error)
    except AmctError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, ValueError,
            NotImplementedError, RuntimeError, KeyError, OverflowError, TypeError,
            struct.error) as exc:
        # zipfile reports a corrupt or encrypted archive through all of these.
        raise error(f"{where}: not a readable .npz archive ({short(str(exc), 120)})") from None
    return arrays


def read_array_file(path: str | os.PathLike, what: str, error: ErrorType
                    ) -> dict[str, np.ndarray]:
    """Arrays of an `.npz` (by key) or `.npy` (key '') file, told apart by their first bytes
    as `np.load` does."""
    path = Path(path)
    with open_regular(path, what, error) as stream:
        size = os.fstat(stream.fileno()).st_size
        magic = stream.read(len(_NPY_MAGIC))
        stream.seek(0)
        if magic == _NPY_MAGIC:
            return {"": read_npy(stream, size, str(path), error)}
        if magic[:4] in _ZIP_MAGICS:
            return read_npz_entries(stream, str(path), error)
    raise error(f"{path}: not an .npz or .npy file (it starts with neither the zip nor the "
                f"NumPy signature); save the {what} with numpy.savez or numpy.save")


def _size(count: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", MIB), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0
