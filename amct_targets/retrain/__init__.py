"""Retraining machinery: a trainable view over a frozen graph and the training loop."""
