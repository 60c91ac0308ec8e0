"""Shared fixtures. Tests run hermetically: installed plugins are not autoloaded unless a
test asks for them (AMCT_TARGETS_DISABLE_PLUGIN_AUTOLOAD)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch):
    monkeypatch.setenv("AMCT_TARGETS_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("AMCT_TARGETS_PATH", raising=False)
    monkeypatch.delenv("AMCT_TARGETS_TRACE_PLUGINS", raising=False)


@pytest.fixture(scope="session")
def oplib(tmp_path_factory):
    """The Ascend op library, really compiled once per test session in a temporary cache and
    loaded into this process (tests/oplib_support.py: build_and_load)."""
    from oplib_support import build_and_load

    with pytest.MonkeyPatch.context() as monkeypatch:
        return build_and_load(tmp_path_factory.mktemp("oplib"), monkeypatch)


@pytest.fixture
def demo_pb() -> Path:
    from amct_targets.demo import demo_paths

    return demo_paths()[0]


@pytest.fixture
def demo_calib() -> Path:
    from amct_targets.demo import demo_paths

    return demo_paths()[1]


class CliResult:
    def __init__(self, code, out, err):
        self.code, self.out, self.err = code, out, err

    def json(self):
        return json.loads(self.out)


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process: cli("build", "--target", "x") -> CliResult."""
    from amct_targets.cli import main

    def run(*args):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse usage errors
            code = exc.code
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def run_cli_subprocess(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    """The real console entry point in a fresh interpreter (for exit codes, tracebacks)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "amct_targets", *map(str, args)],
                          capture_output=True, text=True, env=full_env, cwd=cwd, timeout=600)
