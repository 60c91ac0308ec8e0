"""The exact `atc` command that compiles an emitted .pb for one chip, shell-quoted.

Also a built-in plugin: its `atc_options` hook adds the profile's capability flags
(e.g. `--sparsity=1` when a pass needing `sparsity_4of2` ran).
"""
from __future__ import annotations

import re
import shlex
from typing import Iterable

from amct_targets.errors import PluginError
from amct_targets.graph.model import Model, TensorSpec
from amct_targets.hooks import hookimpl

# One atc flag, as the device profile schema's `flag`: no control characters in the value.
_FLAG = re.compile(r"--[a-z_]+(=[^\x00-\x1f\x7f-\x9f\u2028\u2029]*)?")


@hookimpl
def atc_options(profile, plan, model):
    ran = {cap for step in plan.running() for cap in step.requires}
    flags = []
    for capability, capability_flags in sorted(profile.atc.get("capability_flags", {}).items()):
        if capability in ran:
            flags += list(capability_flags)
    return flags


def atc_input_shape(inputs: Iterable[TensorSpec]) -> str:
    """ATC's --input_shape value: `name:d0,d1,...;name2:...`."""
    return ";".join(f"{spec.name}:{spec.shape_text()}" for spec in inputs)


def static_batch(model: Model) -> tuple[Model, list[str]]:
    """Give an unknown leading (batch) dimension the value 1, as ATC needs static shapes, and
    write the static input shapes into the graph's Placeholders, so that the emitted .pb, the
    atc command and `amct-targets check` on the .pb all agree.

    Returns the model with updated input specs and graph, and a note per input changed.
    """
    specs, notes = [], []
    for spec in model.inputs:
        if spec.shape and spec.shape[0] is None:
            spec = TensorSpec(spec.name, spec.dtype, (1,) + tuple(spec.shape[1:]))
            notes.append(f"input '{spec.name}': unknown batch dimension set to 1 for ATC; "
                         "choose another with --input-shape")
        specs.append(spec)
    graph_def = model.copy_graph_def()
    static = {s.name: s.shape for s in specs
              if s.shape is not None and all(d is not None for d in s.shape)}
    for node in graph_def.node:
        if node.op == "Placeholder" and node.name in static:
            node.attr["shape"].shape.Clear()
            for size in static[node.name]:
                node.attr["shape"].shape.dim.add().size = int(size)
    return model.replace(inputs=tuple(specs), graph_def=graph_def), notes


def _flag_key(flag: str) -> str:
    return flag.split("=", 1)[0]


def atc_argv(profile, model: Model, pb_path: str, output_prefix: str,
             extra_flags: Iterable[str] = ()) -> list[str]:
    """The atc argument vector; later flags with the same name as an earlier one are dropped."""
    atc = profile.atc
    argv = ["atc", f"--model={pb_path}", f"--framework={atc.get('framework', 3)}",
            f"--output={output_prefix}", f"--soc_version={profile.soc_version}"]
    if model.inputs:
        argv.append(f"--input_shape={atc_input_shape(model.inputs)}")
    argv.append(f"--input_format={atc.get('input_format', 'NHWC')}")
    argv.append(f"--out_nodes={';'.join(model.outputs)}")
    argv.append(f"--precision_mode={atc.get('precision_mode', 'force_fp16')}")
    seen = {_flag_key(a) for a in argv[1:]}
    extra_flags = list(extra_flags)
    for flag in extra_flags:
        if not isinstance(flag, str) or not _FLAG.fullmatch(flag):
            text = repr(flag) if len(repr(flag)) <= 120 else repr(flag)[:120] + "..."
            raise PluginError(f"an atc_options hook returned the flag {text}; atc flags are "
                              "--name or --name=value without control characters")
    for flag in list(atc.get("extra_flags", [])) + extra_flags:
        if _flag_key(flag) not in seen:
            argv.append(flag)
            seen.add(_flag_key(flag))
    return argv


def shell_command(argv: Iterable[str]) -> str:
    """One shell line in which every argument stays literal (spaces, quotes, ;, $(), newlines)."""
    words = list(argv)
    if any("\0" in word for word in words):
        raise ValueError("a shell word cannot hold a NUL character")
    return " ".join(shlex.quote(word) for word in words)


def comment_text(text: str) -> str:
    """`text` fit for one `#` comment line: every character that is not printable (newlines,
    carriage returns, escape sequences, line separators) becomes '?', so nothing after it
    can start a new command line."""
    return "".join(c if c.isprintable() else "?" for c in text)


def atc_script(argv: list[str], profile) -> str:
    """The atc.sh text: a comment, a `cd` into the script's own folder (the argv names files
    relative to it, so the folder is relocatable) and one line of shell-quoted words."""
    comment = comment_text(f"Compile for {profile.display_name} (soc_version "
                           f"{profile.soc_version}) with ATC from the CANN toolkit.")
    return (f"#!/bin/sh\n# {comment}\nset -e\ncd \"$(dirname \"$0\")\"\n"
            f"{shell_command(argv)}\n")
