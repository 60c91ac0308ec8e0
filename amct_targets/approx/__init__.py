"""Approximate calibration (AMCT, ASCEND_FACTS 6): Softmax -> FastSoftmax.

- `kernel`: the FastSoftmax definition, parameter validity, NumPy reference.
- `fit`: fitting (a, b, clip_value) to sampled Softmax rows.
- `sample`: the bounded-memory row sample kept per Softmax during calibration.
- `ops`: the FastSoftmax NodeDef and its simulation expander (registered on import).
- `config`: the pass's config section in AMCT's approximation-config shape.
"""
from amct_targets.approx.fit import FitResult, fit_fast_softmax
from amct_targets.approx.kernel import ALGO, FastSoftmaxParams, invalid_reason, ref_fast_softmax
from amct_targets.approx.ops import OP_TYPE, expand_fast_softmax, fast_softmax_node
from amct_targets.approx.sample import SoftmaxRowSample

__all__ = ["ALGO", "OP_TYPE", "FastSoftmaxParams", "FitResult", "SoftmaxRowSample",
           "expand_fast_softmax", "fast_softmax_node", "fit_fast_softmax", "invalid_reason",
           "ref_fast_softmax"]
