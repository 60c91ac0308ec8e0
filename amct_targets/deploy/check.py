"""ATC-readiness check of a frozen GraphDef for one target. Built-in plugin (`check_model`).

What ATC needs from a TensorFlow model (ASCEND_FACTS 7): a FrozenGraphDef (no variable
ops), only operators from the CANN TF operator list (the profile's `atc.tf_ops`, plus the op
types plugins declare through `register_ops`, e.g. the AMCT deploy ops), static
input shapes with no zero dimension (or supplied with --input-shape), supported input
dtypes, and no training-only ops.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass

from amct_targets.graph.load import VARIABLE_OPS, placeholder_specs
from amct_targets.graph.ops import AtcAcceptance
from amct_targets.hooks import hookimpl

_NO = AtcAcceptance(False, "")


@dataclass(frozen=True)
class Finding:
    severity: str   # "error" | "warning"
    code: str       # stable identifier, e.g. "not-frozen"
    node: str       # the node at fault ("" for the whole graph)
    message: str

    def to_json(self) -> dict:
        return asdict(self)

    def render(self) -> str:
        where = f" [{self.node}]" if self.node else ""
        return f"{self.severity}: {self.code}{where}: {self.message}"


@hookimpl
def check_model(graph_def, profile, input_specs, ops):
    findings: list[Finding] = []
    allowed = set(profile.atc.get("tf_ops", {}).get("ops", []))
    if ops is not None:  # op types plugins declare ATC accepts for this target
        allowed |= {n.op for n in graph_def.node
                    if (ops.atc_acceptance(n.op, profile.name) or _NO).accepted}
    training_only = set(profile.atc.get("training_only_ops", []))
    by_op: dict[str, list[str]] = defaultdict(list)
    for node in graph_def.node:
        by_op[node.op].append(node.name)
    for op in sorted(by_op):
        nodes = by_op[op]
        more = f" (and {len(nodes) - 1} more)" if len(nodes) > 1 else ""
        if op in VARIABLE_OPS:
            findings.append(Finding("error", "not-frozen", nodes[0],
                                    f"{op} is a variable op{more}; ATC reads only frozen graphs: "
                                    "freeze with convert_variables_to_constants_v2"))
        elif op in training_only:
            findings.append(Finding("error", "training-op", nodes[0],
                                    f"{op} is a training-only op{more}; export the inference "
                                    "graph (training=False) before compiling"))
        elif allowed and op not in allowed:
            findings.append(Finding("error", "unsupported-op", nodes[0],
                                    f"op type {op}{more} is not in the TF operator list of "
                                    f"{profile.name} ({profile.path.name}: atc.tf_ops) and no "
                                    "plugin declares that ATC accepts it (register_ops)"))
    specs = {s.name: s for s in (input_specs or placeholder_specs(graph_def))}
    dtypes = set(profile.atc.get("input_dtypes", []))
    for spec in specs.values():
        if dtypes and spec.dtype not in dtypes:
            findings.append(Finding("error", "input-dtype", spec.name,
                                    f"input dtype {spec.dtype} is not accepted by ATC for "
                                    f"TensorFlow ({', '.join(sorted(dtypes))}; "
                                    f"{profile.path.name}: atc.input_dtypes)"))
        if spec.shape is None or any(d is None or d < 0 for d in spec.shape):
            findings.append(Finding("error", "dynamic-shape", spec.name,
                                    f"input shape ({spec.shape_text() or 'unknown rank'}) is not "
                                    f"static; give it with --input-shape {spec.name}:D1,D2,..."))
        elif any(d == 0 for d in spec.shape):
            findings.append(Finding("error", "zero-dimension", spec.name,
                                    "ATC rejects a dimension of 0"))
    return findings

