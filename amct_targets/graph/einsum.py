"""Einsum -> (Transpose, Reshape) + BatchMatMulV2 / MatMul, where the equation allows.

Keras 3's MultiHeadAttention computes its attention with `Einsum` (`BTNH,BSNH->BNTS`,
`BNTS,BSNH->BTNH`), and layers built on `einsum` may compute projections with it. AMCT's
quantization rules and the tools that count and prune layers speak MatMul / BatchMatMul, so
every two-operand Einsum is rewritten into them:

    letters in both operands and the output: batch (B)      kept as leading batch dims
    letters in one operand and the output:   free (M, N)    rows / columns of the product
    letters in both operands, not the output: contracted (K)

    a -> Transpose to [B, M, K] (Reshape to [B, prod M, prod K] when M or K has several
    letters), b -> [B, K, N] likewise, BatchMatMulV2 (MatMul without batch letters), then
    Reshape back and Transpose to the output's order. The last node takes the Einsum's name.

A Const operand is transposed and reshaped in NumPy, so a projection's weight stays a Const
(quantizable). Equations with ellipses, repeated letters, a letter summed within one operand,
more than two operands or dynamic sizes that a Reshape would need are left alone, with the
reason in the notes. Transposes and reshapes move data only, so the result is the same
float32 product up to summation order.
"""
from __future__ import annotations

import numpy as np

from amct_targets.graph.nodes import (DT_INT32, attr_value, const_node, const_value, float_type,
                                      make_node, type_attr)
from amct_targets.graph.run import static_shapes


def parse(equation: str):
    """(a letters, b letters, output letters), or a reason string."""
    text = equation.replace(" ", "")
    if "..." in text:
        return "ellipsis in the equation"
    if "->" not in text:
        return "implicit output"
    inputs, out = text.split("->")
    terms = inputs.split(",")
    if len(terms) != 2:
        return f"{len(terms)} operands"
    a, b = terms
    for term in (a, b, out):
        if len(set(term)) != len(term) or not term.isalpha():
            return f"repeated or non-letter index in '{term}'"
    for letter in set(a) | set(b):
        if letter not in out and not (letter in a and letter in b):
            return f"index '{letter}' is summed within one operand"
    if set(out) - set(a) - set(b):
        return "output index absent from the operands"
    return a, b, out


class _Builder:
    def __init__(self, node, taken: set[str]):
        self.node, self.taken, self.nodes = node, taken, []

    def name(self, part: str) -> str:
        name, k = f"{self.node.name}/matmul_form/{part}", 0
        while name in self.taken:
            k += 1
            name = f"{self.node.name}/matmul_form/{part}_{k}"
        self.taken.add(name)
        return name

    def const(self, part: str, value) -> str:
        self.nodes.append(const_node(self.name(part), value))
        return self.nodes[-1].name

    def transpose(self, part: str, x: str, perm) -> str:
        if list(perm) == sorted(perm):
            return x
        self.nodes.append(make_node(self.name(part), "Transpose",
                                    [x, self.const(f"{part}_perm", np.array(perm, np.int32))],
                                    T=float_type(), Tperm=type_attr(DT_INT32)))
        return self.nodes[-1].name

    def reshape(self, part: str, x: str, shape) -> str:
        self.nodes.append(make_node(self.name(part), "Reshape",
                                    [x, self.const(f"{part}_shape", np.array(shape, np.int32))],
                                    T=float_type(), Tshape=type_attr(DT_INT32)))
        return self.nodes[-1].name


def _target_shape(sizes: list[int | None]) -> list[int] | None:
    """A Reshape target with at most one unknown (-1) dimension, or None."""
    if sum(s is None for s in sizes) > 1:
        return None
    return [-1 if s is None else int(s) for s in sizes]


def _product(sizes) -> int | None:
    return None if any(s is None for s in sizes) else int(np.prod(sizes, dtype=np.int64))


def rewrite_einsum(node, nodes: dict, shapes: dict, taken: set[str]):
    """(replacement nodes, None) or (None, reason) for one Einsum node."""
    if node.attr["T"].type != 1:
        return None, "not float32"
    parsed = parse(node.attr["equation"].s.decode())
    if isinstance(parsed, str):
        return None, parsed
    a_terms, b_terms, out = parsed
    inputs = [i for i in node.input if not i.startswith("^")]
    dims = {}
    for term, ref in ((a_terms, inputs[0]), (b_terms, inputs[1])):
        shape = shapes.get(ref.split(":")[0])
        if shape is None or len(shape) != len(term):
            return None, "operand rank unknown"
        for letter, size in zip(term, shape):
            dims[letter] = size if dims.get(letter) is None else dims[letter]
    batch = [c for c in out if c in a_terms and c in b_terms]
    free_a = [c for c in a_terms if c in out and c not in b_terms]
    free_b = [c for c in b_terms if c in out and c not in a_terms]
    contracted = [c for c in a_terms if c in b_terms and c not in out]
    if not contracted:
        return None, "no contracted index (an outer product)"
    e = _Builder(node, taken)
    merge = len(free_a) != 1 or len(free_b) != 1 or len(contracted) != 1
    groups = {"m": free_a, "k": contracted, "n": free_b}
    sizes = {key: _product([dims[c] for c in letters]) for key, letters in groups.items()}
    # A merged group of unknown size is fine when it is the one -1 of its Reshape (the batch
    # of a projection `abc,cde->abde`); `_target_shape` refuses two unknowns per Reshape.

    def operand(ref, term, order, first, second, part):
        perm = [term.index(c) for c in batch + groups[first] + groups[second]]
        target = [dims[c] for c in batch] + [sizes[first], sizes[second]]
        producer = nodes.get(ref.split(":")[0])
        if producer is not None and producer.op == "Const" and ":" not in ref.strip("0:"):
            value = np.transpose(const_value(producer), perm)
            if merge:
                value = value.reshape([d for d in value.shape[:len(batch)]] +
                                      [sizes[first], sizes[second]])
            return e.const(part, value.astype(np.float32)), None
        x = e.transpose(f"{part}_transpose", ref, perm)
        if merge:
            shape = _target_shape(target)
            if shape is None:
                return None, "a Reshape would need two dynamic sizes"
            x = e.reshape(f"{part}_reshape", x, shape)
        return x, None

    a, reason = operand(inputs[0], a_terms, None, "m", "k", "a")
    if reason:
        return None, reason
    b, reason = operand(inputs[1], b_terms, None, "k", "n", "b")
    if reason:
        return None, reason
    if batch:
        e.nodes.append(make_node(e.name("matmul"), "BatchMatMulV2", [a, b], T=float_type(),
                                 adj_x=attr_value(b=False), adj_y=attr_value(b=False)))
    else:
        e.nodes.append(make_node(e.name("matmul"), "MatMul", [a, b], T=float_type(),
                                 transpose_a=attr_value(b=False), transpose_b=attr_value(b=False)))
    y = e.nodes[-1].name
    product_order = batch + free_a + free_b
    if merge:
        shape = _target_shape([dims[c] for c in product_order])
        if shape is None:
            return None, "a Reshape would need two dynamic sizes"
        y = e.reshape("unmerge", y, shape)
    perm = [product_order.index(c) for c in out]
    if perm != sorted(perm):
        e.transpose("output", y, perm)
    last = e.nodes[-1]
    e.taken.discard(last.name)
    last.name = node.name
    last.input.extend(i for i in node.input if i.startswith("^"))
    return e.nodes, None


def einsum_to_matmul(graph_def, where: str = "<graph>"):
    """(new graph, notes): every Einsum the rewrite supports becomes matmul form."""
    if not any(n.op == "Einsum" for n in graph_def.node):
        return graph_def, []
    shapes = static_shapes(graph_def, where)
    nodes = {n.name: n for n in graph_def.node}
    taken = set(nodes)
    out = type(graph_def)()
    out.CopyFrom(graph_def)
    del out.node[:]
    notes = []
    for node in graph_def.node:
        if node.op != "Einsum":
            out.node.add().CopyFrom(node)
            continue
        replacement, reason = rewrite_einsum(node, nodes, shapes, taken)
        if replacement is None:
            out.node.add().CopyFrom(node)
            notes.append(f"Einsum '{node.name}' ({node.attr['equation'].s.decode()}) kept: "
                         f"{reason}")
        else:
            out.node.extend(replacement)
    return out, notes
