"""Where a one-target build's seconds go: cProfile of `amct_targets.build` on the frozen
ResNet50 of benchmarks/speed.py, 4 calibration batches.

    python benchmarks/profile_quantize.py [--size 224] [--batch 32] [--label after]

Writes benchmarks/results/profile_quantize_<label>.txt: the build's wall time, the pass
seconds from report.json, and the functions with the most cumulative time (amct_targets and
the TensorFlow entry points they call).
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def ablation(pb: Path, npz: Path, batch: int) -> list[str]:
    """Seconds of the calibration function's parts: the same 4 batches through the folded
    graph fetching the outputs plus a growing part of every calibrated tensor's summary
    (k = 103 as for 4 x 32 at 224), each after one warm-up call (grappler and the first
    run, reported apart), and the seconds to import the graph and prune the function."""
    import numpy as np
    import tensorflow as tf

    import amct_targets as at
    from amct_targets.calibration import stats as st
    from amct_targets.graph.fold_bn import fold_batch_norm
    from amct_targets.graph.load import load_model
    from amct_targets.graph.run import GraphRunner
    from amct_targets.quant.calibrate import batches, calibrate
    from amct_targets.quant.config import QuantSettings
    from amct_targets.quant.int8 import select_int8_layers

    plugins = at.api.session().plugins
    profiles = at.api.session().profiles.select(["ascend310"])
    model, _, _ = fold_batch_norm(load_model(str(pb)), frozenset(), plugins.ops.layouts)
    settings = QuantSettings.from_section({"batch_num": 4}, plugins.quantizers)
    selection = select_int8_layers(model, profiles[0], settings, plugins.ops.layouts)
    requests = selection.stats_requests(plugins.quantizers)
    data = batches(dict(np.load(npz)), 4, batch, "calibration data")
    feeds = [d["input"] for d in data]
    lines = [f"calibrated tensors: {len(requests)}"]

    def summary(x, keys):
        per_sample = int(np.prod(x.shape.as_list()[1:]))
        full = st.batch_summary_tensors(x, 103, 8192, size_hint=per_sample * batch)
        return [full[key] for key in keys]

    parts = {"outputs only": (),
             "+ min/max": ("min", "max"),
             "+ histogram": ("min", "max", "hist"),
             "+ top (k largest)": ("min", "max", "hist", "top"),
             "full summary": ("count", "finite", "min", "max", "top", "bottom", "hist")}
    for label, keys in parts.items():
        started = time.perf_counter()
        runner = GraphRunner(model.graph_def, model.input_names, model.outputs,
                             ops=plugins.ops, extend=lambda g, k=keys: {
                                 n: summary(g.get_tensor_by_name(n), k) for n in requests})
        fn = runner.function([runner.tensor(t) for t in model.outputs]
                             + [t for n in sorted(requests) for t in runner.extra[n]])
        built = time.perf_counter() - started
        started = time.perf_counter()
        fn(feeds[0])
        first = time.perf_counter() - started
        started = time.perf_counter()
        for f in feeds:
            fn(f)
        lines.append(f"{label:<20} build {built:5.2f} s  first call {first:5.2f} s  "
                     f"4 batches {time.perf_counter() - started:6.2f} s")
    started = time.perf_counter()
    calibrate(model, requests, data, ops=plugins.ops)
    lines.append(f"{'full calibrate()':<28} (build + 4 batches, no warm-up) "
                 f"{time.perf_counter() - started:6.2f} s")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--label", default="after")
    parser.add_argument("--top", type=int, default=45)
    args = parser.parse_args()
    from speed import prepare

    pb, npz = prepare()[args.size]
    import amct_targets as at
    from amct_targets.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    config = {"passes": {"quantize": {"batch_num": 4, "batch_size": args.batch}}}
    out = Path(tempfile.mkdtemp(prefix="profile-"))
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    reports = at.build(str(pb), "ascend310", calib=str(npz), config=config, output_dir=out)
    profiler.disable()
    seconds = time.perf_counter() - started
    report = reports["ascend310"]
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("cumulative").print_stats(args.top)
    lines = [f"# cProfile of a one-target build: ResNet50 {args.size}x{args.size}, 4 batches of "
             f"{args.batch}, code label '{args.label}'",
             f"build wall seconds (in process, TF imported before): {seconds:.2f}",
             "pass seconds: " + json.dumps({p["name"]: p["seconds"] for p in report["passes"]}),
             "", text.getvalue()]
    if not os.environ.get("NO_ABLATION"):
        lines[3:3] = ["## calibration ablation"] + ablation(pb, npz, args.batch) + [""]
    path = HERE / "results" / f"profile_quantize_{args.label}.txt"
    path.write_text("\n".join(lines))
    print("\n".join(lines[:3]))


if __name__ == "__main__":
    main()
