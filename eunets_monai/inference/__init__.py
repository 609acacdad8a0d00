"""Inference: the explained predictor for sliding-window inference and batch NIfTI inference."""
