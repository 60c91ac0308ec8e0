"""Device profiles: facts of the four chips, schema validation, extends, user folders."""
from __future__ import annotations

import textwrap

import pytest

import amct_targets as at
from amct_targets.errors import ProfileError
from amct_targets.session import Session


def profiles(targets_dirs=()):
    return Session.create(targets_dirs=targets_dirs).profiles


def test_the_four_builtin_targets_with_their_soc_versions():
    found = {p.name: p for p in profiles().targets()}
    assert sorted(found) == ["ascend310", "ascend310p", "ascend910", "ascend910b"]
    assert found["ascend310"].soc_version == "Ascend310"
    assert found["ascend310p"].soc_version == "Ascend310P3"
    assert found["ascend910"].soc_version == "Ascend910A"
    assert found["ascend910b"].soc_version == "Ascend910B1"


def test_plain_ascend910b_soc_string_belongs_to_the_old_910_not_atlas_a2():
    found = {p.name: p for p in profiles().targets()}
    assert "Ascend910B" in found["ascend910"].data["soc_versions"]
    assert "Ascend910B" not in found["ascend910b"].data["soc_versions"]
    assert all(s.startswith("Ascend910B") and s != "Ascend910B"
               for s in found["ascend910b"].data["soc_versions"])


@pytest.mark.parametrize("target,int8,sparsity,fast_softmax", [
    ("ascend310", True, False, False),
    ("ascend310p", True, False, True),
    ("ascend910", True, False, False),
    ("ascend910b", True, True, False),
])
def test_capabilities_follow_the_ascend_support_tables(target, int8, sparsity, fast_softmax):
    profile = at.load_target(target)
    assert profile.capability("int8").supported is int8
    assert profile.capability("sparsity_4of2").supported is sparsity
    assert profile.capability("fast_softmax").supported is fast_softmax
    assert profile.capability("channel_pruning").supported
    assert profile.capability("channel_pruning").params["channel_align"] == 16
    assert profile.capability("tensor_decomposition").supported
    if not sparsity:
        assert "gain" in profile.capability("sparsity_4of2").reason


def test_every_compute_figure_has_a_source():
    for profile in profiles().targets():
        assert profile.data["compute"], profile.name
        for key, figure in profile.data["compute"].items():
            assert figure["source"].strip(), (profile.name, key)


def test_extends_merges_the_base_profile():
    profile = at.load_target("ascend310p")
    assert profile.atc["framework"] == 3
    assert "Conv2D" in profile.atc["tf_ops"]["ops"]
    assert profile.data["quantizable_ops"]["MatMul"]["attrs"]["transpose_b"] is False


def test_abstract_base_is_not_a_target():
    with pytest.raises(ProfileError, match="unknown target 'ascend_common'"):
        at.load_target("ascend_common")


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(ProfileError) as info:
        at.load_target("ascend999")
    assert "ascend310, ascend310p, ascend910, ascend910b" in str(info.value)


def write(folder, name, text):
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_user_profile_folder_adds_a_target_that_extends_a_builtin(tmp_path):
    write(tmp_path, "myboard", """
        name: myboard
        extends: ascend310p
        display_name: My board
        soc_version: Ascend310P1
        """)
    profile = profiles([tmp_path]).get("myboard")
    assert profile.soc_version == "Ascend310P1"
    assert profile.capability("fast_softmax").supported
    assert profile.origin == "--targets-dir"


def test_environment_variable_adds_profile_folders(tmp_path, monkeypatch):
    write(tmp_path, "envboard", "name: envboard\nextends: ascend310\n")
    monkeypatch.setenv("AMCT_TARGETS_PATH", str(tmp_path))
    assert "envboard" in at.list_targets()


@pytest.mark.parametrize("body,expected", [
    ("name: bad\nextends: ascend310\ncapabilities: {int8: 3}\n", "$.capabilities.int8"),
    ("name: bad\nextends: ascend310\nsoc_version: Huawei310\n", "$.soc_version"),
    ("name: bad\nextends: ascend310\natc: {framework: 5}\n", "$.atc.framework"),
    ("name: bad\nextends: ascend310\ncolour: red\n", "'colour' was unexpected"),
    ("name: bad\nextends: ascend310\ncapabilities: {warp_drive: true}\n",
     "$.capabilities.warp_drive: unknown capability key"),
    ("name: bad\nextends: nothing\n", "$.extends: no profile named 'nothing'"),
    ("name: bad\nsoc_version: Ascend310\n", "missing required field"),
    ("name: bad\nextends: ascend310\nsoc_version: Ascend910A\n",
     "$.soc_version: 'Ascend910A' is not one of $.soc_versions"),
    ("name: other\nextends: ascend310\n", "must equal the file name 'bad'"),
    ("name: bad\n  extends: [\n", "not valid YAML"),
])
def test_invalid_profile_names_file_and_json_path(tmp_path, body, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(ProfileError) as info:
        profiles([tmp_path])
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert expected in message


def test_extends_cycle_is_reported(tmp_path):
    write(tmp_path, "a", "name: a\nextends: b\n")
    write(tmp_path, "b", "name: b\nextends: a\n")
    with pytest.raises(ProfileError, match="cycle"):
        profiles([tmp_path])


def test_yaml_is_read_safely(tmp_path):
    write(tmp_path, "evil", "name: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ProfileError, match="not valid YAML"):
        profiles([tmp_path])


def test_profiles_are_inside_the_installed_package():
    from amct_targets.profiles import builtin_targets_dir

    names = sorted(p.name for p in builtin_targets_dir().glob("*.yaml"))
    assert names == ["ascend310.yaml", "ascend310p.yaml", "ascend910.yaml", "ascend910b.yaml",
                     "ascend_common.yaml"]


def test_yaml_exponent_floats_are_numbers_as_in_yaml_1_2():
    """PyYAML (YAML 1.1) reads `1e-3` as a string; configs are read as YAML 1.2 does."""
    from amct_targets.safe_io import load_yaml

    data = load_yaml("a: 1e-3\nb: -2.5E+4\nc: 3e0\nd: 1e\ne: '1e-3'\nf: 7\ng: 1_0\n", "c.yaml",
                     "config", ValueError)
    assert data == {"a": 0.001, "b": -25000.0, "c": 3.0, "d": "1e", "e": "1e-3", "f": 7,
                    "g": 10}
    assert type(data["c"]) is float and type(data["f"]) is int
    import yaml

    assert yaml.safe_load("a: 1e-3") == {"a": "1e-3"}  # PyYAML's own loader is left as it is
