"""Uncertainty: the collaboration gradient of adjacent MHEX+ heads, and the baselines it is compared with."""
