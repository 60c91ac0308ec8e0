"""Every extension point of amct-targets, one hook each (pluggy project `amct_targets`).

Built-in passes, profiles, ops, quantizers, loaders and checks are plugins implementing these
same hooks (hooks/manager.py `DEFAULT_PLUGINS`). Hooks are called through pluggy, so
`tryfirst`/`trylast` and hook wrappers work; implementations are called newest-registered
first (installed and `--plugin` plugins before the built-ins).

The registration hooks run once per session, in this order: `register_capabilities`,
`register_targets`, `register_ops`, `register_quantizers`, `register_passes`.
"""
from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("amct_targets")


@hookspec
def register_passes(registry):
    """Add compression passes.

    :param registry: a `PassRegistry`; call `registry.add(pass_object)` with an object that has
        the attributes of `amct_targets.passes.base.CompressionPass` (name, summary, requires,
        stage, apply, ...). A name registered twice is an error naming both plugins.
    :return: ignored. Called for every implementation.
    """


@hookspec
def register_targets(registry):
    """Add device profiles (YAML files validated by the device-profile schema).

    :param registry: a `TargetRegistry`; call `registry.add_dir(folder)` (every `*.yaml` in
        it) or `registry.add_file(path)`. A later profile with the same name replaces an
        earlier one; `--targets-dir` and AMCT_TARGETS_PATH folders come after every plugin.
    :return: ignored. Called for every implementation.
    """


@hookspec
def register_capabilities(registry):
    """Declare capability keys a profile's `capabilities` may use.

    :param registry: a `CapabilityRegistry`; call `registry.add(key, description)`. A key
        declared by two plugins is an error.
    :return: ignored. Called for every implementation.
    """


@hookspec
def register_ops(registry):
    """Declare what amct-targets knows about op types: simulation expander, ATC acceptance,
    weight layout.

    :param registry: an `OpRegistry` (graph/ops.py); call `registry.add(OpSpec(op_type,
        expand=..., atc=AtcAcceptance(...), layout=LayerLayout(...)))`. Each field of an op
        type may be set by one plugin only. An op that a pass emits needs an `expand` so that
        `simulate`, calibration and every later graph run can execute it, and an `atc` entry
        so that the ATC check accepts it.
    :return: ignored. Called for every implementation.
    """


@hookspec
def register_quantizers(registry):
    """Add activation (`act_algo`) and weight (`wts_algo`) quantization algorithms.

    :param registry: a `QuantizerRegistry` (quant/algorithms.py); call
        `registry.add_activation(ActivationAlgorithm(...))` or
        `registry.add_weight(WeightAlgorithm(...))`, each with its name, the JSON Schema of
        its parameters, the statistics it needs from calibration and its compute function.
    :return: ignored. Called for every implementation.
    """


@hookspec(firstresult=True)
def load_model(source, options):
    """Load a model the built-in loaders do not know.

    :param source: what the user gave: a path (str / os.PathLike), a Keras model, or any
        object.
    :param options: a `LoadOptions` (graph/load.py) with `outputs` (tensor names or None) and
        `input_shapes`.
    :return: an `amct_targets.graph.Model` (frozen GraphDef, inputs, outputs), or None when
        this implementation does not handle `source`. The first non-None result wins; the
        built-in loaders (.pb, SavedModel folder, .keras/.h5, in-memory Keras model, Model)
        are `trylast`.
    """


@hookspec
def adjust_plan(plan, profile, config):
    """Change a finished plan in place: reorder steps, mark them RUN or SKIP with a reason.

    :param plan: the `Plan` (planner.py) for one target; edit `plan.steps`.
    :param profile: the target's `DeviceProfile`.
    :param config: the whole build config (a mapping; do not modify it).
    :return: ignored. Called for every implementation.
    """


@hookspec
def atc_options(profile, plan, model):
    """Contribute flags to the target's atc command.

    :param profile: the target's `DeviceProfile`.
    :param plan: the `Plan` that ran.
    :param model: the final `Model`.
    :return: a list of `--flag=value` strings, or None. Every implementation's list is used;
        a flag already on the command line is not added twice.
    """


@hookspec
def check_model(graph_def, profile, input_specs, ops):
    """Report ATC-readiness problems of a frozen graph.

    :param graph_def: the GraphDef (do not modify it).
    :param profile: the target's `DeviceProfile`.
    :param input_specs: the inputs (`TensorSpec`s) with the static shapes atc will get.
    :param ops: the `OpRegistry` (which op types plugins say ATC accepts).
    :return: a list of `amct_targets.deploy.check.Finding`, or None. All results are merged.
    """


@hookspec
def build_finished(report, target_dir):
    """Observe one finished target build before its folder is moved into place.

    :param report: the report.json dict of the target (add keys under your plugin's name).
    :param target_dir: the target's folder (a `pathlib.Path`; still the staging copy).
    :return: ignored. Called for every implementation.
    """
