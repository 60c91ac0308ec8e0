"""Accuracy you can see and trust: evaluation of every build on held-out data (`--eval`), the
accuracy budget of the build config (`accuracy:`), the cures that keep layers INT8
(cross-layer equalization, bias correction) and AMCT-style accuracy-based auto-calibration.

    evaluate.py     float vs compressed model on the evaluation set -> report `evaluation`
    budget.py       the `accuracy:` budget and the evaluator objects (AMCT's evaluator API)
    search.py       the fallback search: ranked layers + trial(float_layers) -> (ok, loss)
    sensitivity.py  each governed layer's output in the compressed model against float
    equalize.py     cross-layer equalization (Nagel et al. 2019) on the frozen graph
    bias_correction.py  empirical bias correction of quantized layers
    control.py      the build's driver: plan, evaluate, cure, search, write AMCT's artifacts
"""
