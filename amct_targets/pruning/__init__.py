"""Filter (output channel) pruning: BalancedL2Norm ranking and the graph surgery that removes
channels from a frozen graph. The retraining pass wraps these."""
from amct_targets.pruning.channel_groups import ChannelGroup, ConstEdit, prunable_layers
from amct_targets.pruning.ranking import (balanced_l2_norm_scores, filter_l2_norms, kept_channels,
                                          kept_count, mask_for)
from amct_targets.pruning.surgery import prune_output_channels, zero_pruned_channels

__all__ = ["ChannelGroup", "ConstEdit", "balanced_l2_norm_scores", "filter_l2_norms",
           "kept_channels", "kept_count", "mask_for", "prunable_layers",
           "prune_output_channels", "zero_pruned_channels"]
