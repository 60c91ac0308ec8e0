"""AMCT's TensorFlow API on TF 2 graph mode (`tf.compat.v1`): port an AMCT script by
changing one line, `import amct_tensorflow as amct` -> `import amct_targets.amct_tensorflow
as amct`. See docs/amct.md for every function and option and its status here.

Importing this module registers the Ascend op types (AscendQuant, AscendWeightQuant,
AscendDequant, AscendAntiQuant, FastSoftmax) with TensorFlow (oplib.py), so a deploy .pb
imports and runs in a plain tf.compat.v1.Session.
"""
from __future__ import annotations

from amct_targets.quiet import import_tensorflow_quietly

import_tensorflow_quietly()

from amct_targets.amct_tensorflow import oplib as _oplib  # noqa: E402

OP_LIBRARY_LOADED = _oplib.install()

from amct_targets.amct_tensorflow.approximation import (  # noqa: E402
    create_approximation_calibrator, save_approximation_graph,
)
from amct_targets.amct_tensorflow.auto_calibration import (  # noqa: E402
    accuracy_based_auto_calibration,
)
from amct_targets.amct_tensorflow.calibration import quantize_model  # noqa: E402
from amct_targets.amct_tensorflow.log import set_logging_level  # noqa: E402
from amct_targets.amct_tensorflow.qat import convert_qat_model  # noqa: E402
from amct_targets.amct_tensorflow.quant_config import create_quant_config  # noqa: E402
from amct_targets.amct_tensorflow.save import (  # noqa: E402
    convert_model, save_model, save_model_ascend,
)


def create_quant_config_ascend(config_file, graph, skip_layers=None, activation_offset=True,
                               config_defination=None):
    """The online-inference variant (no batch_num: one calibration batch)."""
    create_quant_config(config_file, graph, skip_layers=skip_layers, batch_num=1,
                        activation_offset=activation_offset,
                        config_defination=config_defination)


def quantize_model_ascend(graph, config_file, record_file, outputs):
    """The online-inference variant: returns (calib_graph, calib_outputs); here the
    calibration ops go into `graph` itself, whose outputs keep their names."""
    quantize_model(graph, config_file, record_file, calib_outputs=outputs)
    return graph, list(outputs)


__all__ = [
    "accuracy_based_auto_calibration", "convert_model", "convert_qat_model",
    "create_approximation_calibrator", "create_quant_config", "create_quant_config_ascend",
    "quantize_model", "quantize_model_ascend", "save_approximation_graph", "save_model",
    "save_model_ascend", "set_logging_level",
]
