"""ATC-readiness check: frozen, op list from the profile, static shapes, no training ops."""
from __future__ import annotations


import amct_targets as at


def graph_file(tmp_path, build, name="g.pb"):
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        build(tf)
    path = tmp_path / name
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return path


def codes(findings):
    return sorted((f.code, f.node) for f in findings)


def test_emitted_demo_passes_the_check(tmp_path, demo_pb):
    at.build(demo_pb, "ascend310", output_dir=tmp_path / "o")
    assert at.check(tmp_path / "o" / "ascend310" / "digits_cnn.pb", "ascend310",
                    input_shapes={"image": (1, 8, 8, 1)}) == []


def test_dynamic_batch_needs_an_input_shape(demo_pb):
    findings = at.check(demo_pb, "ascend310")
    assert codes(findings) == [("dynamic-shape", "image")]
    assert "--input-shape image:" in findings[0].message


def test_findings_name_the_node(tmp_path):
    def build(tf):
        x = tf.compat.v1.placeholder(tf.float32, [1, 4], name="x")
        w = tf.compat.v1.get_variable("w", [4, 4])
        y = tf.matmul(x, w, name="mm")
        tf.raw_ops.Erfinv(x=y, name="bucket")   # no CANN TF parser maps Erfinv
        tf.compat.v1.placeholder(tf.string, [1], name="text")
        tf.raw_ops.FusedBatchNormGradV3(
            y_backprop=tf.zeros([1, 1, 1, 4]), x=tf.zeros([1, 1, 1, 4]), scale=tf.ones([4]),
            reserve_space_1=tf.ones([4]), reserve_space_2=tf.ones([4]),
            reserve_space_3=tf.ones([4]), name="bn_grad")

    findings = at.check(graph_file(tmp_path, build), "ascend310p")
    found = codes(findings)
    assert ("not-frozen", "w") in found
    assert ("unsupported-op", "bucket") in found
    assert ("training-op", "bn_grad") in found
    assert ("input-dtype", "text") in found
    unsupported = next(f for f in findings if f.code == "unsupported-op")
    assert "Erfinv" in unsupported.message and "ascend310p.yaml" in unsupported.message


def test_op_list_is_data_in_the_profile(tmp_path):
    def build(tf):
        x = tf.compat.v1.placeholder(tf.float32, [1, 4], name="x")
        tf.raw_ops.Erfinv(x=x, name="bucket")

    pb = graph_file(tmp_path, build)
    boards = tmp_path / "boards"
    boards.mkdir()
    (boards / "wide.yaml").write_text(
        "name: wide\nextends: ascend310\natc:\n  tf_ops:\n    source: test\n"
        "    ops: [Placeholder, Const, Erfinv]\n")
    assert at.check(pb, "wide", targets_dirs=[boards]) == []
    assert codes(at.check(pb, "ascend310")) == [("unsupported-op", "bucket")]


def test_check_cli_exit_codes(cli, tmp_path, demo_pb):
    failing = cli("check", demo_pb, "--target", "ascend310")
    assert failing.code == 3
    assert "error: dynamic-shape [image]" in failing.out
    passing = cli("check", demo_pb, "--target", "ascend310", "--input-shape", "image:1,8,8,1",
                  "--json")
    assert passing.code == 0
    assert passing.json() == {"pb": str(demo_pb), "target": "ascend310", "errors": 0,
                              "findings": []}


def test_plugins_add_findings_through_check_model(tmp_path, monkeypatch, demo_pb):
    from plugin_fixtures import write_plugin

    module = write_plugin(tmp_path, "small_cin_checker", '''
from amct_targets import hookimpl
from amct_targets.deploy.check import Finding

@hookimpl
def check_model(graph_def, profile, input_specs):
    nodes = {n.name: n for n in graph_def.node}
    findings = []
    for node in graph_def.node:
        if node.op == "Conv2D":
            weight = nodes[node.input[1]]
            cin = weight.attr["value"].tensor.tensor_shape.dim[2].size
            if cin <= 16:
                findings.append(Finding("warning", "small-cin", node.name,
                                        f"{cin} input channels: no INT8 gain on Ascend"))
    return findings
''', monkeypatch)
    findings = at.check(demo_pb, "ascend310", input_shapes={"image": (1, 8, 8, 1)},
                        plugins=[module])
    assert [(f.severity, f.code) for f in findings] == [("warning", "small-cin"),
                                                        ("warning", "small-cin")]
    assert findings[0].message == "1 input channels: no INT8 gain on Ascend"
    report = at.build(demo_pb, "ascend310", output_dir=tmp_path / "o",
                      plugins=[module])["ascend310"]
    assert report["metrics"]["check_warnings"] == 2 and report["metrics"]["check_errors"] == 0
