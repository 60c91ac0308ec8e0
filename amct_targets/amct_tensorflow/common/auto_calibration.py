"""AMCT's evaluator base class for `accuracy_based_auto_calibration`."""
from __future__ import annotations


class AutoCalibrationEvaluatorBase:
    """Subclass it and implement the three methods; each runs the user's own sessions and
    data on the tf.Graph it is handed (the model imported with name '')."""

    def calibration(self, graph, outputs):
        """Run `batch_num` calibration batches through `outputs` of `graph` (a graph where
        quantize_model inserted the calibration ops): global_variables_initializer first."""
        raise NotImplementedError("AutoCalibrationEvaluatorBase.calibration(graph, outputs) "
                                  "must be implemented by the evaluator subclass")

    def evaluate(self, graph, outputs):
        """Run the evaluation data through `outputs` of `graph`; return the metric (any
        object metric_eval accepts)."""
        raise NotImplementedError("AutoCalibrationEvaluatorBase.evaluate(graph, outputs) "
                                  "must be implemented by the evaluator subclass")

    def metric_eval(self, original_metric, new_metric):
        """(is the new metric acceptable: bool, the loss against the original: float)."""
        raise NotImplementedError("AutoCalibrationEvaluatorBase.metric_eval(original_metric, "
                                  "new_metric) must be implemented by the evaluator subclass")
