"""INT8 quantization machinery shared by the `quantize` (and later `qat`) passes: layer
discovery, AMCT config and record formats, calibration runs, deploy-graph rewrite."""
