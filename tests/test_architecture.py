"""The package's shape: no import cycle, no oversized module, one place that knows weight
layouts, and listing/planning machinery that imports no TensorFlow."""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "amct_targets"
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(path: Path, name: str, modules) -> set[str]:
    """Modules of the package that `name` imports anywhere: at module level and inside
    functions (deferred imports count: a cycle through them is still a cycle), not inside
    `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()

    def visit(statements):
        for node in statements:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                visit(list(ast.iter_child_nodes(node)))
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                # `from pkg import mod` imports the module; `from mod import name` the module
                submodules = {f"{base}.{alias.name}" for alias in node.names} & set(modules)
                targets.update(submodules or {base})

    visit(tree.body)
    resolved = set()
    for target in targets:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    return resolved


def test_the_import_graph_has_no_cycle():
    modules = _modules()
    graph = {name: _imports(path, name, modules) for name, path in modules.items()}
    state, cycles = {}, []

    def walk(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    assert len(graph) > 60
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_module_is_over_400_lines():
    sizes = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    assert {n: s for n, s in sizes.items() if s > MAX_LINES} == {}


def test_only_the_layout_table_maps_op_types_to_weight_positions():
    """No module but graph/layout.py holds a dict keyed by compute op types whose values are
    input indices or axes (the shape OP_LAYOUT / CIN_AXIS tables had)."""
    offenders = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Dict):
                continue
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
            numeric = all(isinstance(v, (ast.Constant, ast.Tuple)) and
                          not isinstance(getattr(v, "value", 0), str) for v in node.values)
            if keys & {"Conv2D", "MatMul", "DepthwiseConv2dNative"} and numeric:
                offenders.append(name)
    assert offenders == []
    layout = (PACKAGE / "graph" / "layout.py").read_text()
    assert 'LayerLayout("Conv2D", 0, 1, 2, (3,), 4)' in layout


def test_listing_planning_and_the_plugin_machinery_import_no_tensorflow():
    script = textwrap.dedent("""
        import sys
        from amct_targets.cli import main
        from amct_targets.session import Session
        from amct_targets.planner import order_passes
        assert main(["targets"]) == 0
        assert main(["passes", "--target", "ascend910b"]) == 0
        session = Session.create(autoload=False)
        order = [p.name for p in order_passes(list(session.plugins.passes))]
        assert order[0] == "fold_bn" and order.index("qat") < order.index("quantize"), order
        assert sorted(session.plugins.ops.expanders) == ["AscendAntiQuant", "AscendDequant",
            "AscendQuant", "AscendWeightQuant", "FastSoftmax"]
        loaded = [m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow.")]
        print("TF-MODULES", len(loaded))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, cwd=REPO,
                         env={"AMCT_TARGETS_DISABLE_PLUGIN_AUTOLOAD": "1", "PATH": "/usr/bin"})
    assert run.returncode == 0, run.stderr
    assert "TF-MODULES 0" in run.stdout
