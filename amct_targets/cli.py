"""The `amct-targets` command (a contract: see DESIGN.md "Command line").

Exit codes: 0 success; 1 user error (one message, no traceback); 2 usage error;
3 when `check` finds errors.
"""
from __future__ import annotations

import argparse
import shlex
import json
import sys
from pathlib import Path

from amct_targets import __version__
from amct_targets.amct_cli import add_parser as add_amct_parser
from amct_targets.amct_cli import cmd_amct
from amct_targets.errors import AmctError

EXIT_USER_ERROR, EXIT_USAGE, EXIT_CHECK_FAILED = 1, 2, 3
TF_COMMANDS = ("plan", "build", "check", "simulate", "amct")   # `targets`, `passes`: no TensorFlow


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="load a plugin module explicitly (repeatable)")
    common.add_argument("--targets-dir", action="append", default=[], metavar="DIR",
                        help="a folder of device profiles of your own (repeatable)")
    common.add_argument("--json", action="store_true", help="machine-readable output")

    parser = argparse.ArgumentParser(
        prog="amct-targets",
        description="Compress TensorFlow models for Huawei Ascend NPUs, per target chip.")
    parser.add_argument("--version", action="version", version=f"amct-targets {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("targets", parents=[common], help="device profiles and their capabilities")
    p = sub.add_parser("passes", parents=[common], help="registered passes")
    p.add_argument("--target", help="say whether this target supports each pass")
    p = sub.add_parser("plan", parents=[common], help="which passes run for a target, and why")
    p.add_argument("model")
    p.add_argument("--target", action="append", required=True,
                   help="target name, repeatable, or 'all'")
    p.add_argument("--config")
    p.add_argument("--calib")
    p.add_argument("--train")
    p = sub.add_parser("build", parents=[common],
                       help="compress MODEL (default: the bundled demo) for one or more targets")
    p.add_argument("model", nargs="?", help="frozen .pb, SavedModel folder or .keras/.h5 file")
    p.add_argument("--target", action="append", required=True,
                   help="target name, repeatable, or 'all'")
    p.add_argument("--calib", help=".npz keyed by input name, or .npy")
    p.add_argument("--train", help=".npz with the inputs and labels 'y'")
    p.add_argument("--eval", help=".npz keyed like --calib, optional labels 'y': evaluate "
                   "float vs compressed (report.json 'evaluation'; the accuracy budget)")
    p.add_argument("--config", help="build config, YAML or JSON")
    p.add_argument("--output", default="amct_out", help="output folder (default: amct_out)")
    p.add_argument("--input-shape", help="ATC syntax: name:1,224,224,3[;name2:...]")
    p.add_argument("--outputs", help="output node names, comma separated")
    p = sub.add_parser("check", parents=[common], help="ATC-readiness findings for a .pb")
    p.add_argument("pb")
    p.add_argument("--target", required=True)
    p.add_argument("--input-shape")
    p = sub.add_parser("simulate", parents=[common], help="run a .pb in stock TensorFlow")
    p.add_argument("pb")
    p.add_argument("--input", required=True, help=".npz keyed by input name, or .npy")
    p.add_argument("--output", required=True, help=".npz to write the outputs to")
    add_amct_parser(sub)
    return parser


def _session(args, quiet=None):
    from amct_targets.session import Session

    return Session.create(plugins=args.plugin, targets_dirs=args.targets_dir,
                          quiet=True if args.json else quiet)


def _print_json(data) -> None:
    print(json.dumps(data, indent=2))


def cmd_targets(args) -> int:
    session = _session(args)
    profiles = session.profiles.targets()
    if args.json:
        _print_json([p.to_json() for p in profiles])
        return 0
    for p in profiles:
        print(f"{p.name:<12} {p.soc_version:<13} {p.display_name} - {p.data.get('family', '')}")
        print(f"{'':<12} supports: {', '.join(p.supported_capabilities())}")
        unsupported = sorted(set(p.data.get("capabilities", {})) -
                             set(p.supported_capabilities()))
        if unsupported:
            print(f"{'':<12} lacks:    {', '.join(unsupported)}")
    return 0


def cmd_passes(args) -> int:
    session = _session(args)
    profile = session.profiles.get(args.target) if args.target else None
    rows = []
    for registered in session.plugins.passes:
        impl = registered.impl
        row = {"name": impl.name, "summary": impl.summary, "plugin": registered.plugin,
               "origin": session.plugins.origins.get(registered.plugin, "?"),
               "stage": impl.stage, "requires": list(impl.requires),
               "needs": list(getattr(impl, "needs", ())),
               "enabled_by_default": bool(getattr(impl, "enabled_by_default", False))}
        if profile is not None:
            missing = [c for c in impl.requires if not profile.capability(c).supported]
            row["supported"] = not missing
            if missing:
                row["reason"] = profile.capability(missing[0]).reason
        rows.append(row)
    if args.json:
        _print_json(rows)
        return 0
    for row in rows:
        support = ""
        if profile is not None:
            support = (f"  [{profile.name}: yes]" if row["supported"]
                       else f"  [{profile.name}: no - {row['reason']}]")
        requires = ", ".join(row["requires"]) or "-"
        default = "on" if row["enabled_by_default"] else "off"
        print(f"{row['name']:<16} {row['summary']}")
        print(f"{'':<16} from {row['plugin']} ({row['origin']}); requires {requires}; "
              f"stage {row['stage']}; default {default}{support}")
    return 0


def cmd_plan(args) -> int:
    from amct_targets.api import plan_targets

    plans = plan_targets(args.model, args.target, config=args.config, calib=args.calib,
                         train=args.train, plugins=args.plugin, targets_dirs=args.targets_dir)
    if args.json:
        _print_json(plans[0].to_json() if len(plans) == 1 else [p.to_json() for p in plans])
    else:
        print("\n\n".join(p.render() for p in plans))
    return 0


def cmd_build(args) -> int:
    from amct_targets.accuracy.evaluate import auto_calibration_line, summary_line
    from amct_targets.builder import build
    from amct_targets.demo import demo_paths
    from amct_targets.graph.load import parse_input_shapes

    session = _session(args)
    model, calib = args.model, args.calib
    if model is None:
        model, demo_calib = demo_paths()
        calib = calib or demo_calib
        session.progress(f"no MODEL given: building the bundled demo {Path(model).name}")
    shapes = parse_input_shapes(args.input_shape) if args.input_shape else None
    outputs = [o.strip() for o in args.outputs.split(",") if o.strip()] if args.outputs else None
    results = build(session, model, args.target, calib=calib, train=args.train,
                    config=args.config, output_dir=args.output, input_shapes=shapes,
                    outputs=outputs, evaluation=args.eval)
    if args.json:
        _print_json({"output": str(Path(args.output).resolve()),
                     "targets": [r.report for r in results]})
        return 0
    for result in results:
        report = result.report
        ran = [p["name"] for p in report["passes"] if p["status"] == "ran"]
        skipped = [p for p in report["passes"] if p["status"] == "skipped"]
        errors = report["metrics"]["check_errors"]
        print(f"{result.target}: {result.folder / report['artifacts']['pb']}")
        print(f"  ran: {', '.join(ran) or 'nothing'}; skipped: {len(skipped)}; "
              f"ATC check: {'ok' if not errors else f'{errors} error(s)'}")
        for entry in report["passes"]:
            if entry["status"] == "ran" and entry.get("metrics"):
                metrics = ", ".join(f"{k}={v}" for k, v in entry["metrics"].items())
                print(f"  {entry['name']}: {metrics}")
        if "evaluation" in report:
            print(f"  {summary_line(report['evaluation'])}")
        if "auto_calibration" in report:
            print(f"  {auto_calibration_line(report['auto_calibration'])}")
        for finding in report["checks"]:
            print(f"  {finding['severity']}: {finding['code']} [{finding['node']}]: "
                  f"{finding['message']}")
        script = result.folder / report["artifacts"]["atc_script"]
        print(f"  atc: sh {shlex.quote(str(script))}   # runs, in its folder: "
              f"{report['atc_command']}")
    return 0


def cmd_check(args) -> int:
    import amct_targets as at
    from amct_targets.graph.load import parse_input_shapes

    shapes = parse_input_shapes(args.input_shape) if args.input_shape else None
    findings = at.check(args.pb, args.target, input_shapes=shapes, plugins=args.plugin,
                        targets_dirs=args.targets_dir)
    errors = sum(f.severity == "error" for f in findings)
    if args.json:
        _print_json({"pb": args.pb, "target": args.target, "errors": errors,
                     "findings": [f.to_json() for f in findings]})
    else:
        for finding in findings:
            print(finding.render())
        print(f"{args.pb}: {errors} error(s), {len(findings) - errors} warning(s) for "
              f"{args.target}")
    return EXIT_CHECK_FAILED if errors else 0


def cmd_simulate(args) -> int:
    import numpy as np

    from amct_targets.data import read_arrays
    from amct_targets.simulate import load_simulation

    run = load_simulation(args.pb, ops=_session(args).plugins.ops)
    arrays = read_arrays(args.input, "input")
    if len(run.inputs) == 1 and len(arrays) == 1:
        feed = next(iter(arrays.values()))
    else:
        feed = arrays
    result = run(feed)
    outputs = result if isinstance(result, dict) else {run.outputs[0]: result}
    out = Path(args.output)
    try:
        np.savez(out, **{name.replace(":", "_"): value for name, value in outputs.items()})
    except OSError as exc:
        raise AmctError(f"{out}: cannot write the outputs ({exc.strerror})") from None
    if args.json:
        _print_json({"output": str(out), "tensors": {k: list(v.shape) for k, v in outputs.items()}})
    else:
        for name, value in outputs.items():
            print(f"{name}: shape {list(value.shape)} -> {out}")
    return 0


COMMANDS = {"targets": cmd_targets, "passes": cmd_passes, "plan": cmd_plan, "build": cmd_build,
            "check": cmd_check, "simulate": cmd_simulate, "amct": cmd_amct}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in TF_COMMANDS:
        from amct_targets.quiet import import_tensorflow_quietly

        import_tensorflow_quietly()
    try:
        return COMMANDS[args.command](args)
    except AmctError as exc:
        print(f"amct-targets: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("amct-targets: interrupted; no output was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
