"""`amct_targets.amct_tensorflow.common`, as AMCT's `amct_tensorflow.common`."""
