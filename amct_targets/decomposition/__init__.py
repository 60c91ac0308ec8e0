"""Tensor decomposition (AMCT): a kh x kw Conv2D as a kh x 1 conv followed by a 1 x kw conv.

- `rank`: EVBMF and energy rank estimates, AMCT's clip and rounding rules.
- `svd`: leading singular triplets, exact or randomized (large kernels in seconds).
- `conv`: eligibility, order of the two convs, unfolding, the two kernels, FLOPs.
- `plan`: the per-conv decisions for a model; `rewrite`: the GraphDef rewrite.
The pass itself (`decompose`, `decompose_model`) is `amct_targets.passes.decompose`.
"""
from amct_targets.decomposition.conv import (
    H_FIRST, MIN_SIZE_DEFAULTS, W_FIRST, ConvGeometry, choose_mode, eligibility_reason,
    factor_weights, relative_error, split_flops, unfold,
)
from amct_targets.decomposition.plan import DecomposeSettings, LayerPlan, plan_model
from amct_targets.decomposition.rank import (
    EvbmfResult, amct_rank_range, energy_rank, evbmf, round_rank,
)
from amct_targets.decomposition.svd import Svd, leading_svd

__all__ = ["ConvGeometry", "DecomposeSettings", "EvbmfResult", "H_FIRST", "LayerPlan",
           "MIN_SIZE_DEFAULTS", "Svd", "W_FIRST", "amct_rank_range", "choose_mode",
           "eligibility_reason", "energy_rank", "evbmf", "factor_weights", "leading_svd",
           "plan_model", "relative_error", "round_rank", "split_flops", "unfold"]
