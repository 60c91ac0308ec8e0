"""Built-in plugin: the capability keys a device profile may use, each with its meaning.

Plugins add keys of their own through the same `register_capabilities` hook.
"""
from __future__ import annotations

from amct_targets.hooks import hookimpl

BUILTIN_CAPABILITIES = {
    "int8": "INT8 inference of quantized layers (AscendQuant / AscendWeightQuant / "
            "AscendDequant in the .pb); enables the `quantize` pass",
    "qat": "INT8 quantization-aware training produces a model this chip runs in INT8; "
           "enables the `qat` pass",
    "channel_pruning": "Filter (channel) pruning; parameter `channel_align`: kept channel "
                       "counts are rounded to this multiple when `ascend_optimized` is set",
    "sparsity_4of2": "4:2 structured sparsity pays off on this chip (ATC --sparsity=1 "
                     "compresses every 4 weights along Cin into 2 values and 2-bit indices)",
    "fast_softmax": "Softmax may be replaced by the FastSoftmax approximation, which this "
                    "chip accelerates",
    "tensor_decomposition": "Convolutions may be split into two low-rank convolutions",
    "bn_fusion": "BatchNorm folded into the preceding Conv2D / DepthwiseConv2dNative / MatMul",
    "first_layer_quant": "ATC can fuse AIPP with the first AscendQuant "
                         "(--compression_optimize_conf enable_first_layer_quantization)",
}


@hookimpl
def register_capabilities(registry):
    for key, description in BUILTIN_CAPABILITIES.items():
        registry.add(key, description)
