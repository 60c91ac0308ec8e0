"""Property-based tests (hypothesis) with generated hostile input: `atc.sh` keeps every word
literal and runs nothing else; the data readers and the config/profile loaders either succeed
or raise one AmctError, never another exception, and in bounded time."""
from __future__ import annotations

import io
import os
import subprocess
import time
import unicodedata
import zipfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from amct_targets.config import load_build_config
from amct_targets.data import read_arrays
from amct_targets.deploy.atc import atc_argv, atc_script
from amct_targets.errors import AmctError, ConfigError, PluginError, ProfileError
from amct_targets.profiles import DeviceProfile, ProfileSet, builtin_targets_dir
from amct_targets.safe_io import YAML_MAX_NODES

# Deterministic examples (CI reruns are reproducible), no example database written to the
# repository, and a per-example deadline that proves bounded time.
PROPERTY = settings(max_examples=60, deadline=timedelta(seconds=5), derandomize=True,
                    database=None, suppress_health_check=[HealthCheck.too_slow])

# Text a file name, profile or plugin could carry: anything but NUL (no argv can hold it) and
# lone surrogates (not text).
ANY_CHAR = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
PAYLOADS = ["$(touch pwned)", "`touch pwned`", "'; touch pwned; '", "\ntouch pwned\n",
            '"; touch pwned; "', "$IFS", "\\", "'", "${PATH}", "*", "~", "#", "&& touch pwned",
            "| touch pwned", "\r\ntouch pwned", "\u2028touch pwned", "-", "--", " ", "",
            "\\'$(touch pwned)\\'", "'\"'\"'", "\x1b]0;touch pwned\x07", ";", "\t"]
HOSTILE = st.one_of(
    st.text(ANY_CHAR, max_size=24), st.sampled_from(PAYLOADS),
    st.builds(lambda a, b, c: a + b + c, st.text(ANY_CHAR, max_size=6),
              st.sampled_from(PAYLOADS), st.text(ANY_CHAR, max_size=6)))

FAKE_ATC = "#!/bin/sh\nfor word in \"$@\"; do printf '%s\\0' \"$word\"; done > \"$ATC_ARGV\"\n"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("atc_sandbox")
    (root / "bin").mkdir()
    (root / "bin" / "atc").write_text(FAKE_ATC)
    (root / "bin" / "atc").chmod(0o755)
    return root


def run_script(sandbox: Path, text: str) -> list[str]:
    """Run an atc.sh text in an empty folder with a fake `atc` first on PATH; returns the argv
    atc received, and checks the script created nothing but the argv record."""
    work = sandbox / "run"
    work.mkdir()
    try:
        (work / "atc.sh").write_text(text, encoding="utf-8")
        env = {"PATH": f"{sandbox / 'bin'}{os.pathsep}{os.environ['PATH']}",
               "ATC_ARGV": str(work / "argv.bin")}
        run = subprocess.run(["sh", "atc.sh"], cwd=work, env=env, capture_output=True,
                             timeout=30)
        assert run.returncode == 0, run.stderr
        assert sorted(p.name for p in work.iterdir()) == ["argv.bin", "atc.sh"]
        return (work / "argv.bin").read_bytes().decode("utf-8").split("\0")[:-1]
    finally:
        for path in work.iterdir():
            path.unlink()
        work.rmdir()


@pytest.fixture(scope="module")
def demo_model():
    from amct_targets.demo import demo_paths
    from amct_targets.graph.load import load_model

    return load_model(demo_paths()[0])


@pytest.fixture(scope="module")
def ascend310():
    from amct_targets.session import Session

    return Session.create(autoload=False).profiles.get("ascend310")


@PROPERTY
@given(words=st.lists(HOSTILE, max_size=6), display_name=HOSTILE)
def test_atc_script_keeps_every_word_literal_and_runs_nothing_else(sandbox, words,
                                                                   display_name):
    profile = DeviceProfile("board", sandbox / "board.yaml",
                            {"display_name": display_name, "soc_version": "Ascend310"})
    argv = ["atc", *words]
    text = atc_script(argv, profile)
    assert text.split("\n")[1].startswith("# Compile for ")
    assert run_script(sandbox, text) == words


@PROPERTY
@given(flags=st.lists(st.one_of(HOSTILE, st.builds(lambda v: f"--log={v}", HOSTILE)),
                      max_size=4))
def test_plugin_atc_flags_are_literal_words_or_refused(sandbox, demo_model, ascend310, flags):
    import re

    try:
        argv = atc_argv(ascend310, demo_model, "m y.pb", "out put", flags)
    except PluginError as exc:
        bad = [f for f in flags if not re.fullmatch(r"--[a-z_]+(=[^\x00-\x1f\x7f-\x9f\u2028"
                                                    r"\u2029]*)?", f)]
        assert bad and repr(bad[0])[:40] in str(exc)
        return
    assert all(f in argv or f.split("=")[0] in {a.split("=")[0] for a in argv} for f in flags)
    assert run_script(sandbox, atc_script(argv, ascend310)) == argv[1:]


# --- data readers -----------------------------------------------------------------------------

def _read_outcome(path: Path):
    started = time.monotonic()
    try:
        arrays = read_arrays(path, "calibration data")
    except ConfigError as exc:
        assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)
        arrays = None
    assert time.monotonic() - started < 2
    if arrays is not None:
        assert all(isinstance(a, np.ndarray) and not a.dtype.hasobject for a in arrays.values())
        assert sum(a.nbytes for a in arrays.values()) <= 1100 * max(path.stat().st_size, 1)
    return arrays


@PROPERTY
@given(data=st.binary(max_size=1024), suffix=st.sampled_from([".npy", ".npz", ".bin"]))
def test_random_bytes_are_arrays_or_one_config_error(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("bytes") / f"data{suffix}"
    path.write_bytes(data)
    _read_outcome(path)


def _saved(kind: str) -> bytes:
    buffer = io.BytesIO()
    arrays = {"x": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
              "y": np.array([1, 2, 3], dtype=">i8")}
    {"npy": lambda: np.save(buffer, arrays["x"]), "npz": lambda: np.savez(buffer, **arrays),
     "npzc": lambda: np.savez_compressed(buffer, **arrays)}[kind]()
    return buffer.getvalue()


@PROPERTY
@given(kind=st.sampled_from(["npy", "npz", "npzc"]),
       edits=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), min_size=1,
                      max_size=6),
       cut=st.one_of(st.none(), st.integers(0, 10 ** 6)))
def test_corrupted_real_files_are_arrays_or_one_config_error(tmp_path_factory, kind, edits, cut):
    """Real .npy/.npz bytes with generated byte edits (headers, zip records, data) and
    truncations: a header claiming more than the file holds must never be allocated."""
    data = bytearray(_saved(kind))
    for position, value in edits:
        data[position % len(data)] = value
    if cut is not None:
        data = data[:cut % (len(data) + 1)]
    path = tmp_path_factory.mktemp("edits") / f"data.{kind[:3]}"
    path.write_bytes(bytes(data))
    _read_outcome(path)


ARRAYS = hnp.arrays(
    dtype=st.one_of(hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(), hnp.floating_dtypes(),
                    hnp.boolean_dtypes(), hnp.byte_string_dtypes(max_len=4),
                    hnp.unicode_string_dtypes(max_len=4), hnp.complex_number_dtypes()),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))


@PROPERTY
@given(arrays=st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), ARRAYS,
                              min_size=1, max_size=3),
       compressed=st.booleans(), fortran=st.booleans())
def test_real_arrays_round_trip_exactly(tmp_path_factory, arrays, compressed, fortran):
    if fortran:
        arrays = {k: np.asfortranarray(v) for k, v in arrays.items()}
    folder = tmp_path_factory.mktemp("round")
    (np.savez_compressed if compressed else np.savez)(folder / "a.npz", **arrays)
    loaded = _read_outcome(folder / "a.npz")
    assert sorted(loaded) == sorted(arrays)
    for key, array in arrays.items():
        assert loaded[key].dtype == array.dtype and loaded[key].shape == array.shape
        np.testing.assert_array_equal(loaded[key], array)
    first = next(iter(arrays.values()))
    np.save(folder / "b.npy", first)
    np.testing.assert_array_equal(_read_outcome(folder / "b.npy")[""], first)


# --- config and profile loaders ---------------------------------------------------------------

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                    st.text(ANY_CHAR, max_size=12))
STRUCTURES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(ANY_CHAR, max_size=8), inner,
                                                 max_size=4)), max_leaves=20)


def _config_outcome(path: Path):
    started = time.monotonic()
    try:
        config, where = load_build_config(path)
    except ConfigError as exc:
        assert str(exc).startswith(f"{path}") and len(str(exc)) < 1000 and "\n" not in str(exc)
        return None
    finally:
        assert time.monotonic() - started < 2
    assert isinstance(config, dict) and where == str(path)
    return config


@PROPERTY
@given(text=st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_any_config_text_or_bytes_is_a_config_or_one_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    _config_outcome(path)


@PROPERTY
@given(structure=STRUCTURES)
def test_any_yaml_structure_is_a_config_or_one_error(tmp_path_factory, structure):
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_text(yaml.safe_dump({"passes": structure}), encoding="utf-8")
    config = _config_outcome(path)
    if config is not None:  # compared as YAML text: NaN != NaN
        assert yaml.safe_dump(config) == yaml.safe_dump({"passes": structure})


def alias_document(width: int, depth: int) -> tuple[str, int]:
    """A build config whose lists alias the previous level `width` times, `depth` levels;
    returns the text and its node count after expansion (as a YAML composer counts)."""
    lines, sizes = ["passes:"], []
    for level in range(depth + 1):
        items = ", ".join(["x"] * width if level == 0 else [f"*l{level - 1}"] * width)
        lines.append(f"  p{level}: {{data: &l{level} [{items}]}}")
        sizes.append(1 + width * (1 if level == 0 else sizes[-1]))
    return "\n".join(lines) + "\n", 3 + sum(3 + size for size in sizes)


@PROPERTY
@given(width=st.integers(1, 14), depth=st.integers(0, 8))
def test_alias_expansion_is_bounded_exactly(tmp_path_factory, width, depth):
    text, expanded = alias_document(width, depth)
    path = tmp_path_factory.mktemp("alias") / "config.yaml"
    path.write_text(text)
    config = _config_outcome(path)
    assert (config is not None) == (expanded <= YAML_MAX_NODES), expanded


@pytest.fixture(scope="module")
def capability_keys():
    from amct_targets.hooks.manager import load_plugins

    return load_plugins((), autoload=False).capabilities.descriptions


FIELDS = st.sampled_from(["display_name", "family", "soc_version", "soc_versions", "compute",
                          "capabilities", "atc", "description", "quantizable_ops", "extends"])


def _profile_outcome(folder: Path, keys):
    started = time.monotonic()
    try:
        profiles = ProfileSet([(builtin_targets_dir(), "builtin"), (folder, "test")], keys)
    except ProfileError as exc:
        message = str(exc)
        assert message.startswith(f"{folder / 'board.yaml'}") and len(message) < 1000
        assert "\n" not in message
        return None
    finally:
        assert time.monotonic() - started < 3
    return profiles


@PROPERTY
@given(field=FIELDS, value=st.one_of(HOSTILE, STRUCTURES, st.lists(HOSTILE, max_size=3),
                                     st.fixed_dictionaries({"extra_flags": st.lists(HOSTILE)})))
def test_any_profile_field_is_a_safe_profile_or_one_error(tmp_path_factory, sandbox,
                                                         capability_keys, field, value):
    folder = tmp_path_factory.mktemp("profiles")
    data = {"name": "board", "extends": "ascend310", field: value}
    (folder / "board.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    profiles = _profile_outcome(folder, capability_keys)
    if profiles is None or profiles.get("board").abstract:
        return
    board = profiles.get("board")
    for text in [board.display_name, board.data["family"], board.soc_version,
                 *board.atc.get("extra_flags", [])]:
        assert len(text.splitlines()) <= 1 and "\n" not in text
        assert not any(unicodedata.category(c) == "Cc" for c in text)
    words = ["--model=m.pb", f"--soc_version={board.soc_version}",
             *board.atc.get("extra_flags", [])]
    assert run_script(sandbox, atc_script(["atc", *words], board)) == words


@PROPERTY
@given(text=st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_any_profile_text_or_bytes_is_a_profile_or_one_error(tmp_path_factory, capability_keys,
                                                            text):
    folder = tmp_path_factory.mktemp("profiles")
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    (folder / "board.yaml").write_bytes(b"name: board\nextends: ascend310\n" + raw)
    _profile_outcome(folder, capability_keys)


def test_only_amct_errors_escape_the_readers_on_a_zip_with_every_method(tmp_path):
    """Entries compressed with methods NumPy never writes (bzip2, lzma) are refused by name."""
    path = tmp_path / "a.npz"
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(3))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_BZIP2) as archive:
        archive.writestr("x.npy", buffer.getvalue())
    with pytest.raises(AmctError, match="entry 'x.npy': zip compression method 12"):
        read_arrays(path, "data")
