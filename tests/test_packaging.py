"""The wheel carries the device profiles, schemas, demo, report templates and the op library's
C++ source; the console script is declared."""
from __future__ import annotations

import subprocess
import sys
import zipfile

from conftest import REPO


def test_wheel_contains_profiles_schemas_demo_and_report_templates(tmp_path):
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                          "--no-build-isolation", "--wheel-dir", str(tmp_path), str(REPO)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    wheel = next(tmp_path.glob("amct_targets-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("ascend310", "ascend310p", "ascend910", "ascend910b", "ascend_common"):
        assert f"amct_targets/targets/{name}.yaml" in names
    assert "amct_targets/schemas/device_profile.schema.json" in names
    assert "amct_targets/schemas/build_config.schema.json" in names
    assert "amct_targets/demo/digits_cnn.pb" in names
    assert "amct_targets/demo/digits_calib.npz" in names
    for name in ("base.html.j2", "macros.html.j2", "target.html.j2", "index.html.j2",
                 "report.css", "report.js"):
        assert f"amct_targets/report/templates/{name}" in names
    assert "amct_targets/deploy/oplib/ascend_ops.cc" in names   # built at first use
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "amct-targets = amct_targets.cli:main" in text
