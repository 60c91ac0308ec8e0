"""Calibration algorithms of AMCT (ASCEND_FACTS 3): ARQ for weights, IFMR and HFMG for
activations, on statistics whose memory does not grow with the number of batches."""
from __future__ import annotations

from amct_targets.calibration.arq import ArqResult, arq
from amct_targets.calibration.hfmg import hfmg
from amct_targets.calibration.ifmr import ifmr, ifmr_exact
from amct_targets.calibration.stats import (
    ActivationStats, QuantParams, batch_summary_tensors, histogram_quant_mse, k_for_percentile,
)

__all__ = ["ArqResult", "arq", "hfmg", "ifmr", "ifmr_exact", "ActivationStats", "QuantParams",
           "batch_summary_tensors", "histogram_quant_mse", "k_for_percentile"]
