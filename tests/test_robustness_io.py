"""Issue 9, reproduced with real files and real processes: every hostile or broken input is
one clear error (exit 1, one line, no traceback), nothing from a profile reaches the shell,
the input is never overwritten, an earlier build survives, and killed builds are cleaned up.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

import amct_targets as at
from amct_targets import output
from amct_targets.config import load_build_config
from amct_targets.data import read_arrays
from amct_targets.deploy.atc import atc_script
from amct_targets.errors import ConfigError, ModelError, OutputError, ProfileError
from amct_targets.profiles import DeviceProfile
from conftest import REPO, run_cli_subprocess

SCHEMAS = REPO / "amct_targets" / "schemas"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_sha(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_error(run: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit 1, one `amct-targets: error:` line naming what it must, no traceback."""
    assert run.returncode == 1, (run.returncode, run.stderr[-2000:])
    assert run.stderr.startswith("amct-targets: error: "), run.stderr[-2000:]
    assert run.stderr.count("\n") == 1, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    for fragment in fragments:
        assert fragment in run.stderr, (fragment, run.stderr)


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail instead of hanging: SIGALRM interrupts a blocking open() or read()."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def user_profile(folder: Path, name: str = "board", **fields) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = {"name": name, "extends": "ascend310", "display_name": "Board", **fields}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


FAKE_ATC = "#!/bin/sh\nfor word in \"$@\"; do printf '%s\\0' \"$word\"; done > \"$ATC_ARGV\"\n"


def run_atc_script(script: Path, tmp_path: Path) -> list[str]:
    """Run atc.sh with a fake `atc` first on PATH; returns the argv atc received."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "atc").write_text(FAKE_ATC)
    (bin_dir / "atc").chmod(0o755)
    record = tmp_path / "argv.bin"
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "ATC_ARGV": str(record)}
    run = subprocess.run(["sh", str(script)], cwd=tmp_path, env=env, capture_output=True,
                         timeout=30)
    assert run.returncode == 0, run.stderr
    return record.read_bytes().decode("utf-8").split("\0")[:-1]


# --- 1, 2: nothing from a profile reaches the shell; anchored patterns ----------------------

def test_profile_display_name_with_a_command_line_is_refused(tmp_path, demo_pb):
    marker = tmp_path / "injected"
    profiles = tmp_path / "profiles"
    path = user_profile(profiles, display_name=f"Board\ntouch {marker} #")
    run = run_cli_subprocess("build", demo_pb, "--target", "board", "--targets-dir", profiles,
                             "--output", tmp_path / "out")
    assert_one_error(run, f"{path}: $.display_name: ")
    assert not (tmp_path / "out").exists() and not marker.exists()


def test_atc_script_comment_cannot_start_a_command(tmp_path):
    """Defence in depth: even an unvalidated profile's strings stay inside the comment."""
    marker = tmp_path / "injected"
    hostile = f"Board\ntouch {marker}\r\u2028$(touch {marker})\x1b[2J #"
    profile = DeviceProfile("board", tmp_path / "board.yaml",
                            {"display_name": hostile, "soc_version": "Ascend310"})
    argv = ["atc", "--model=a b.pb", f"--output=$(touch {marker})", "--x='\n;touch y'"]
    script = tmp_path / "atc.sh"
    script.write_text(atc_script(argv, profile), encoding="utf-8")
    lines = script.read_text(encoding="utf-8").split("\n")
    assert lines[0] == "#!/bin/sh" and lines[2] == "set -e" and lines[3] == 'cd "$(dirname "$0")"'
    assert lines[1].startswith("# Compile for Board?touch ")
    assert lines[1].endswith("with ATC from the CANN toolkit.")
    assert run_atc_script(script, tmp_path) == argv[1:]
    assert not marker.exists()


def _patterns(node, found):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern":
                found.append(value)
            _patterns(value, found)
    elif isinstance(node, list):
        for value in node:
            _patterns(value, found)
    return found


SAMPLES = ["ok", "ok\n", "x\nAscend310", "Ascend310", "Ascend310\n", "Ascend310\n\n",
           "--log=info", "--log=info\n", "--log=a\nrm x", "ascend310", "ascend310\n", "Conv2D",
           "Conv2D\n", "float32\n", "Atlas 300I", "two\nlines\n"]


@pytest.mark.parametrize("schema", sorted(p.name for p in SCHEMAS.glob("*.json")))
def test_every_schema_pattern_is_anchored_at_both_ends(schema):
    """jsonschema runs `re.search`: a pattern must match a whole string or nothing of it."""
    import re

    patterns = _patterns(json.loads((SCHEMAS / schema).read_text()), [])
    for pattern in patterns:
        assert pattern.startswith("^") and pattern.endswith("$(?!\\n)"), pattern
        for sample in SAMPLES:
            assert bool(re.search(pattern, sample)) == bool(re.fullmatch(pattern, sample)), (
                pattern, sample)
    assert len(patterns) >= (8 if schema.startswith("device") else 0)


@pytest.mark.parametrize("field,value", [
    ("soc_version", "Ascend310\n"), ("soc_versions", ["Ascend310", "Ascend310B\n"]),
    ("display_name", "Board\n"), ("family", "Atlas\x1b[31m"),
    ("atc", {"extra_flags": ["--log=info\n"]}), ("atc", {"extra_flags": ["--log=a\nrm -rf x"]}),
    ("capabilities", {"int8": {"supported": False, "reason": "no\rway"}}),
])
def test_profile_strings_with_control_characters_are_refused(tmp_path, field, value):
    path = user_profile(tmp_path, **{field: value})
    with pytest.raises(ProfileError) as info:
        at.load_target("board", targets_dirs=[tmp_path])
    message = str(info.value)
    assert message.startswith(f"{path}: $.{field}") and "does not match" in message
    assert "\n" not in message.replace("\\n", "")


# --- 3: input and output never overlap ------------------------------------------------------

def test_input_inside_the_output_folder_being_replaced_is_refused(tmp_path, demo_pb):
    out = tmp_path / "R"
    at.build(demo_pb, "ascend310", output_dir=out)
    model = out / "ascend310" / "digits_cnn.pb"
    before = tree_sha(out)
    run = run_cli_subprocess("build", model, "--target", "ascend310", "--output", out)
    assert_one_error(run, f"--output {out} overlaps the model {model}",
                     f"inside {out / 'ascend310'}, which this build replaces")
    assert tree_sha(out) == before


def test_a_deploy_pb_given_as_the_model_is_named_as_such(tmp_path, demo_pb, demo_calib):
    """A build's own INT8 output fed back in: one error naming its first AscendQuant node and
    what to give instead, nothing written (the op library is not loaded in a fresh CLI)."""
    out = tmp_path / "first"
    at.build(demo_pb, "ascend310", calib=demo_calib, output_dir=out)
    deployed = out / "ascend310" / "digits_cnn.pb"
    run = run_cli_subprocess("build", deployed, "--target", "ascend310",
                             "--output", tmp_path / "second")
    assert_one_error(run, f"{deployed}: node '", "(AscendQuant) is an Ascend deploy op: this "
                     ".pb is already an AMCT deploy graph", "build from the float model it came "
                     "from")
    assert not (tmp_path / "second").exists()


def test_output_folder_inside_or_equal_to_the_input_is_refused(tmp_path, demo_pb, demo_calib):
    import tensorflow as tf

    saved = tmp_path / "sm"
    module = tf.Module()
    module.scale = tf.Variable(2.0)
    module.f = tf.function(lambda x: x * module.scale,
                           input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    tf.saved_model.save(module, str(saved), signatures=module.f)
    before = tree_sha(saved)
    with pytest.raises(OutputError, match="the output folder would be written inside the model"):
        at.build(saved, "ascend310", output_dir=saved / "out")
    with pytest.raises(OutputError, match="they are the same path"):
        at.build(saved, "ascend310", output_dir=saved)
    # Other inputs too: calibration data inside a target folder that would be replaced.
    out = tmp_path / "o"
    (out / "ascend910").mkdir(parents=True)
    calib = out / "ascend910" / "calib.npz"
    shutil.copy(demo_calib, calib)
    with pytest.raises(OutputError, match="calibration data lies inside"):
        at.build(demo_pb, ["ascend310", "ascend910"], calib=calib, output_dir=out)
    assert tree_sha(saved) == before and calib.exists()
    assert sorted(p.name for p in out.iterdir()) == ["ascend910"]
    # A model that merely sits in the output folder (not in a replaced target) is fine.
    beside = out / "model.pb"
    shutil.copy(demo_pb, beside)
    at.build(beside, "ascend310", output_dir=out)
    assert sha(beside) == sha(demo_pb)


# --- 5: array headers checked before allocating ---------------------------------------------

def forged_npy(shape: tuple[int, ...]) -> bytes:
    """A real .npy of 4 float32 values whose header claims `shape` (header length kept)."""
    buffer = __import__("io").BytesIO()
    np.save(buffer, np.arange(4, dtype=np.float32).reshape(4, 1, 1, 1))
    data = buffer.getvalue()
    header_len = int.from_bytes(data[8:10], "little")
    header = data[10:10 + header_len].decode("latin1")
    forged = header.replace("(4, 1, 1, 1)", str(shape)).rstrip()
    forged = forged.ljust(header_len - 1) + "\n"
    assert len(forged) == header_len
    return data[:10] + forged.encode("latin1") + data[10 + header_len:]


def test_forged_npy_and_npz_headers_are_refused_without_allocating(tmp_path, demo_pb):
    import resource

    npy = tmp_path / "calib.npy"
    npy.write_bytes(forged_npy((1000000, 1000000, 1, 1)))
    npz = tmp_path / "calib.npz"
    with zipfile.ZipFile(npz, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("image.npy", forged_npy((10 ** 12, 1, 1, 1)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ConfigError, match=r"header claims shape \(1000000, 1000000, 1, 1\) of "
                                          r"float32 \(3.6 TiB\) but only 16 bytes of data"):
        read_arrays(npy, "calibration data")
    with pytest.raises(ConfigError, match=f"{npz}: entry 'image.npy': the header claims"):
        read_arrays(npz, "calibration data")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 50 * 1024  # KiB
    run = run_cli_subprocess("build", demo_pb, "--target", "ascend310", "--calib", npz,
                             "--output", tmp_path / "out")
    assert_one_error(run, f"{npz}: entry 'image.npy': the header claims shape (1000000000000")
    assert not (tmp_path / "out").exists()


def test_zip_entry_claiming_an_impossible_size_and_object_arrays_are_refused(tmp_path):
    path = tmp_path / "forged.npz"
    np.savez(path, image=np.zeros((4, 8, 8, 1), np.float32))
    data = bytearray(path.read_bytes())
    # Claim 2 GiB uncompressed in the central directory for a stored (uncompressed) entry.
    central = data.rindex(b"PK\x01\x02")
    data[central + 24:central + 28] = (2 ** 31).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"entry 'image.npy': claims 2.0 GiB from [\d.]+ KiB "
                                          "compressed; the file is forged"):
        read_arrays(path, "calibration data")
    objects = tmp_path / "objects.npz"
    np.savez(objects, image=np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ConfigError, match="entry 'image.npy': holds Python objects"):
        read_arrays(objects, "calibration data")


def test_real_arrays_still_round_trip(tmp_path):
    x = np.random.default_rng(0).random((3, 4, 5), dtype=np.float32)
    f = np.asfortranarray(np.arange(12, dtype=">i4").reshape(3, 4))
    np.savez_compressed(tmp_path / "a.npz", x=x, f=f, empty=np.zeros((0, 2)))
    np.save(tmp_path / "b.npy", f)
    arrays = read_arrays(tmp_path / "a.npz", "data")
    assert sorted(arrays) == ["empty", "f", "x"]
    np.testing.assert_array_equal(arrays["x"], x)
    np.testing.assert_array_equal(arrays["f"], f)
    assert arrays["f"].dtype == np.dtype(">i4") and arrays["empty"].shape == (0, 2)
    np.testing.assert_array_equal(read_arrays(tmp_path / "b.npy", "data")[""], f)


# --- 6: only regular files; size limits -----------------------------------------------------

def test_fifo_as_the_model_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "model.pb"
    os.mkfifo(fifo)
    started = time.monotonic()
    run = run_cli_subprocess("build", fifo, "--target", "ascend310", "--output",
                             tmp_path / "out")  # times out (fails) after 600 s if it hangs
    assert_one_error(run, f"{fifo}: is a FIFO (named pipe), not a regular file or folder")
    assert time.monotonic() - started < 120 and not (tmp_path / "out").exists()


def test_fifos_devices_and_sockets_as_configs_data_and_profiles(tmp_path, demo_pb):
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    sock_path = tmp_path / "s.npz"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock_path))
    amct = tmp_path / "amct.yaml"
    amct.write_text(yaml.safe_dump({"passes": {"quantize": {"amct_config": "/dev/zero"}}}))
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    os.mkfifo(profiles / "board.yaml")
    with deadline(60):
        with pytest.raises(ConfigError, match=f"{fifo}: is a FIFO"):
            load_build_config(fifo)
        with pytest.raises(ConfigError, match="/dev/zero: is a character device"):
            load_build_config("/dev/zero")
        with pytest.raises(ModelError, match="/dev/zero: is a character device"):
            at.build("/dev/zero", "ascend310", output_dir=tmp_path / "o")
        with pytest.raises(ModelError, match=f"{fifo}: is a FIFO"):
            at.check(fifo, "ascend310")
        with pytest.raises(ConfigError, match=f"{sock_path}: is a socket"):
            read_arrays(sock_path, "calibration data")
        with pytest.raises(ConfigError, match="/dev/zero: is a character device, not a regular "
                                              "file; give the AMCT quantization config"):
            at.build(demo_pb, "ascend310", calib=at_demo_calib(), config=amct,
                     output_dir=tmp_path / "o")
        with pytest.raises(ProfileError, match=f"{profiles / 'board.yaml'}: is a FIFO"):
            at.list_targets(targets_dirs=[profiles])
        saved = tmp_path / "sm"
        (saved / "variables").mkdir(parents=True)
        (saved / "saved_model.pb").write_bytes(b"")
        os.mkfifo(saved / "variables" / "variables.index")
        with pytest.raises(ModelError, match=f"{saved / 'variables' / 'variables.index'}: is a "
                                             f"FIFO \\(named pipe\\) inside the model"):
            at.build(saved, "ascend310", output_dir=tmp_path / "o")
        out = tmp_path / "o2"
        (out / ".amct-staging-planted").mkdir(parents=True)
        os.mkfifo(out / ".amct-staging-planted" / ".owner.json")
        at.build(demo_pb, "ascend310", output_dir=out)  # an unreadable record: not stale yet
        assert (out / ".amct-staging-planted").exists() and (out / "ascend310").is_dir()
    server.close()
    assert not (tmp_path / "o").exists()


def at_demo_calib() -> Path:
    from amct_targets.demo import demo_paths

    return demo_paths()[1]


def test_dev_zero_as_the_config_is_one_line_from_the_cli(tmp_path, demo_pb):
    run = run_cli_subprocess("build", demo_pb, "--target", "ascend310", "--config", "/dev/zero",
                             "--output", tmp_path / "out")
    assert_one_error(run, "/dev/zero: is a character device, not a regular file")


def test_oversized_configs_and_profiles_are_refused_before_reading(tmp_path):
    config = tmp_path / "big.yaml"
    with config.open("wb") as stream:
        stream.truncate(17 * 1024 * 1024)  # sparse: 17 MiB claimed, nothing to read
    with pytest.raises(ConfigError, match=r"big.yaml: 17.0 MiB is too large for a build config "
                                          r"\(at most 16 MiB\)"):
        load_build_config(config)
    profiles = tmp_path / "p"
    profiles.mkdir()
    (profiles / "board.yaml").write_text("name: board\n" + "# padding\n" * 120000)
    with pytest.raises(ProfileError, match=r"board.yaml: 1.1 MiB is too large for a profile"):
        at.list_targets(targets_dirs=[profiles])


# --- 7: alias bombs; short messages ---------------------------------------------------------

BOMB = "\n".join(["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"] +
                 [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
                 + ["passes: *a8"]) + "\n"


def test_yaml_alias_bomb_in_a_config_is_refused_quickly(tmp_path, demo_pb):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=f"{path}: refused: aliases expand to more than "
                                          "1000000 nodes"):
        load_build_config(path)
    assert time.monotonic() - started < 5
    run = run_cli_subprocess("build", demo_pb, "--target", "ascend310", "--config", path,
                             "--output", tmp_path / "out")
    assert_one_error(run, "refused: aliases expand to more than 1000000 nodes")


def test_alias_bombs_and_cycles_in_profiles(tmp_path):
    profiles = tmp_path / "p"
    profiles.mkdir()
    (profiles / "board.yaml").write_text(BOMB.replace("passes: *a8", "name: board\ncompute: *a8"))
    with pytest.raises(ProfileError, match="refused: aliases expand to more than"):
        at.list_targets(targets_dirs=[profiles])
    (profiles / "board.yaml").write_text("name: board\ncompute: &c {x: *c}\n")
    with pytest.raises(ProfileError, match="refers to a node that contains it"):
        at.list_targets(targets_dirs=[profiles])


def test_schema_errors_quote_at_most_a_few_hundred_characters(tmp_path, demo_pb):
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump({"passes": list(range(20000))}))
    with pytest.raises(ConfigError) as info:
        load_build_config(path)
    assert len(str(info.value)) < 600 and "more characters)" in str(info.value)
    assert str(info.value).startswith(f"{path}: $.passes: [0, 1, 2")
    path.write_text(yaml.safe_dump({"passes": {"quantize": {"batch_num": list(range(20000))}}}))
    with pytest.raises(ConfigError) as info:
        at.plan(demo_pb, "ascend310", config=path)
    assert len(str(info.value)) < 600
    assert str(info.value).startswith(f"{path}: passes.quantize.batch_num: [0, 1, 2")


# --- 9: full disk or unwritable output ------------------------------------------------------

def _fsize_limit(limit: int):
    def apply():
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize("limit", [2000, 9000])  # in the quantize pass; at the .pb
def test_file_size_limit_names_the_output_folder_and_keeps_the_earlier_build(
        tmp_path, demo_pb, demo_calib, limit):
    out = tmp_path / "out"
    at.build(demo_pb, "ascend310", calib=demo_calib, output_dir=out)
    earlier, model = tree_sha(out), sha(demo_pb)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    run = subprocess.run([sys.executable, "-m", "amct_targets", "build", str(demo_pb), "--target",
                          "ascend310", "--calib", str(demo_calib), "--output", str(out)],
                         capture_output=True, text=True, env=env, timeout=600,
                         preexec_fn=_fsize_limit(limit))
    assert_one_error(run, f"{out}: cannot write the build output: a file exceeds the file size "
                          "limit (ulimit -f)", "earlier builds in it are unchanged")
    assert "plugin" not in run.stderr and "quantize" not in run.stderr
    assert tree_sha(out) == earlier
    assert sorted(p.name for p in out.iterdir()) == ["ascend310", "index.html"]
    assert sha(demo_pb) == model


FULL_DISK_DRIVER = r'''
import hashlib, json, os, subprocess, sys
mount, earlier, pb, calib = sys.argv[1:5]
out = os.path.join(mount, "out")
subprocess.run(["cp", "-a", earlier, out], check=True)
filler = os.path.join(mount, "filler")
fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # fill the file system, then free one page
try:
    while True:
        os.write(fd, b"\0" * 4096)
except OSError:
    os.close(fd)
size = os.path.getsize(filler)
os.truncate(filler, size - size % 4096 - 4096)
run = subprocess.run([sys.executable, "-m", "amct_targets", "build", pb, "--target",
                      "ascend310", "--calib", calib, "--output", out],
                     capture_output=True, text=True)
files = {os.path.relpath(os.path.join(d, f), out):
         hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest()
         for d, _, fs in os.walk(out) for f in fs}
print(json.dumps({"rc": run.returncode, "stderr": run.stderr, "files": files,
                  "entries": sorted(os.listdir(out))}))
'''


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-Urm", "sh", "-c",
                            "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="cannot mount a tmpfs in a namespace here")
def test_full_disk_names_the_output_folder_not_the_plugin(tmp_path, demo_pb, demo_calib):
    """A real ENOSPC: a 1 MiB tmpfs in a private mount namespace, filled but one page."""
    earlier = tmp_path / "earlier"
    at.build(demo_pb, "ascend310", calib=demo_calib, output_dir=earlier)
    before = tree_sha(earlier)
    driver = tmp_path / "driver.py"
    driver.write_text(FULL_DISK_DRIVER)
    mount = tmp_path / "disk"
    mount.mkdir()
    run = subprocess.run(
        ["unshare", "-Urm", "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$1" && shift && '
         'exec "$@"', "sh", str(mount), sys.executable, str(driver), str(mount), str(earlier),
         str(demo_pb), str(demo_calib)],
        capture_output=True, text=True, timeout=600, env=dict(os.environ,
                                                              PYTHONDONTWRITEBYTECODE="1"))
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    out = mount / "out"
    assert result["rc"] == 1, result["stderr"][-3000:]
    stderr = result["stderr"]
    assert stderr.startswith(f"amct-targets: error: {out}: cannot write the build output: no "
                             "space left on the device; free at least "), stderr
    assert f"on the file system holding {out} (" in stderr and stderr.count("\n") == 1
    assert "plugin" not in stderr and "Traceback" not in stderr
    assert result["entries"] == ["ascend310", "index.html"] and result["files"] == before


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="cannot mount a tmpfs in a namespace here")
def test_read_only_output_folder_is_one_clear_error(tmp_path, demo_pb):
    """A real read-only file system (EROFS), mounted in a private namespace."""
    out = tmp_path / "ro"
    out.mkdir()
    run = subprocess.run(
        ["unshare", "-Urm", "sh", "-c", 'mount -t tmpfs -o ro,size=64k tmpfs "$1" && shift && '
         'exec "$@"', "sh", str(out), sys.executable, "-m", "amct_targets", "build", str(demo_pb),
         "--target", "ascend310", "--output", str(out)],
        capture_output=True, text=True, timeout=600)
    assert_one_error(run, f"{out}: cannot write the build output: the file system is read-only; "
                          "choose a writable folder with --output")


# --- 10: non-UTF-8 ---------------------------------------------------------------------------

def test_non_utf8_config_and_profile_name_the_file(tmp_path):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("passes:\n  quantize: {}\n# réglage\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=f"{config}: line 3: not UTF-8 text \\(byte 0xe9 at "
                                          "offset 26\\); save the build config as UTF-8"):
        load_build_config(config)
    profiles = tmp_path / "p"
    profiles.mkdir()
    (profiles / "board.yaml").write_bytes(b"name: board\ndisplay_name: \xff\xfe\n")
    run = run_cli_subprocess("targets", "--targets-dir", profiles)
    assert_one_error(run, f"{profiles / 'board.yaml'}: line 2: not UTF-8 text (byte 0xff",
                     "save the profile as UTF-8")


# --- 14: training labels -------------------------------------------------------------------

def training_file(tmp_path: Path, labels, count: int = 16, name: str = "train.npz") -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / name
    np.savez(path, image=rng.random((count, 8, 8, 1), dtype=np.float32), y=labels)
    return path


QAT = {"passes": {"qat": {"enabled": True, "epochs": 1}}}


@pytest.mark.parametrize("labels,message", [
    (np.array([0, 1, 2, 12] * 4), r"labels 'y': 4 label\(s\) outside \[0, 10\) \(e.g. 12 at "
                                  r"index 3\); the model's output 'Identity:0' has 10 classes"),
    (np.array([-1] * 16), r"16 label\(s\) outside \[0, 10\)"),
    (np.array(["cat"] * 16), r"labels 'y': dtype <U3 is not numeric"),
    (np.array([1.5] * 16), "some values are not whole numbers"),
    (np.zeros((16, 5), np.float32), r"shape \(16, 5\) fits neither class indices nor the "
                                    r"model's output 'Identity:0' of shape \(N, 10\)"),
    (np.array([1, 2, 3]), "3 labels for 16 samples"),
])
def test_bad_training_labels_are_refused_before_training(tmp_path, demo_pb, labels, message):
    path = training_file(tmp_path, labels)
    with pytest.raises(ConfigError, match=f"{path}: .*{message}"):
        at.build(demo_pb, "ascend310", train=path, config=QAT, output_dir=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_good_labels_pass_the_check(tmp_path, demo_pb):
    from amct_targets.data import load_training
    from amct_targets.graph.load import load_model

    model = load_model(demo_pb)
    for labels in (np.arange(16) % 10, (np.arange(16) % 10).reshape(16, 1).astype(np.float32),
                   np.eye(10, dtype=np.float32)[np.arange(16) % 10]):
        data = load_training(training_file(tmp_path, labels), model, "t")
        np.testing.assert_array_equal(data["y"], labels)


def test_out_of_range_labels_from_the_cli_are_one_line(tmp_path, demo_pb):
    path = training_file(tmp_path, np.array([3, 10] * 8))
    config = tmp_path / "qat.yaml"
    config.write_text(yaml.safe_dump(QAT))
    run = run_cli_subprocess("build", demo_pb, "--target", "ascend310", "--train", path,
                             "--config", config, "--output", tmp_path / "out")
    assert_one_error(run, f"{path}: labels 'y': 8 label(s) outside [0, 10)")


# --- 18: killed builds ----------------------------------------------------------------------

def _start_build(out: Path, demo_pb: Path, demo_calib: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "amct_targets", "build", str(demo_pb),
                             "--target", "ascend310", "--calib", str(demo_calib), "--output",
                             str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for_staging(out: Path, process: subprocess.Popen) -> Path:
    started = time.monotonic()
    while time.monotonic() - started < 300:
        found = [p for p in out.glob(".amct-staging-*") if (p / ".owner.json").exists()]
        if found:
            return found[0]
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.01)
    raise AssertionError("the build never created its staging folder")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_build_leaves_the_earlier_output_and_is_cleaned_up(tmp_path, demo_pb,
                                                                  demo_calib, sig):
    out = tmp_path / "out"
    at.build(demo_pb, "ascend310", output_dir=out)
    earlier = tree_sha(out / "ascend310")
    process = _start_build(out, demo_pb, demo_calib)
    staging = _wait_for_staging(out, process)
    owner = json.loads((staging / ".owner.json").read_text())
    assert owner["pid"] == process.pid
    process.send_signal(sig)
    assert process.wait(timeout=120) == -sig, process.stderr.read().decode()[-3000:]
    assert tree_sha(out / "ascend310") == earlier
    if sig == signal.SIGTERM:  # cleaned up by the build itself before it ended
        assert not staging.exists() and "Traceback" not in process.stderr.read().decode()
        return
    assert staging.exists()  # SIGKILL cannot be caught: the next build removes it
    at.build(demo_pb, "ascend310", calib=demo_calib, output_dir=out)
    assert sorted(p.name for p in out.iterdir()) == ["ascend310", "index.html"]
    assert (out / "ascend310" / "record.txt").exists()


def _marker(folder: Path, pid: int, start: str | None) -> Path:
    folder.mkdir(parents=True)
    owner = output.Owner.current()
    (folder / ".owner.json").write_text(json.dumps(
        {"host": owner.host, "pid": pid, "start": start, "boot_id": owner.boot_id}))
    return folder


def test_only_staging_folders_of_dead_builds_are_removed(tmp_path, demo_pb):
    out = tmp_path / "out"
    sleeper = subprocess.Popen(["sleep", "60"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        live = _marker(out / ".amct-staging-live", sleeper.pid,
                       output._process_stat(sleeper.pid)[1])
        mine = _marker(out / ".amct-staging-mine", os.getpid(), output.Owner.current().start)
        gone = _marker(out / ".amct-staging-gone", dead.pid, "1")
        reused = _marker(out / ".amct-staging-reused", sleeper.pid, "1")  # pid reused since
        other_host = out / ".amct-staging-far"
        other_host.mkdir()
        (other_host / ".owner.json").write_text(json.dumps(
            {"host": "another-host", "pid": dead.pid, "start": "1", "boot_id": None}))
        fresh, old = out / ".amct-staging-fresh", out / ".amct-staging-old"
        fresh.mkdir()
        old.mkdir()
        os.utime(old, (time.time() - 2 * 86400,) * 2)
        # A dead build had moved the earlier target folder aside just before it was killed.
        (gone / ".old-ascend910").mkdir()
        (gone / ".old-ascend910" / "keep.txt").write_text("earlier build")
        at.build(demo_pb, "ascend310", output_dir=out)
        assert sorted(p.name for p in out.iterdir()) == sorted(
            ["ascend310", "ascend910", "index.html", live.name, mine.name, other_host.name,
             fresh.name])
        assert (out / "ascend910" / "keep.txt").read_text() == "earlier build"
        assert not reused.exists() and not gone.exists() and not old.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    at.build(demo_pb, "ascend310", output_dir=out)
    assert not live.exists() and mine.exists()
