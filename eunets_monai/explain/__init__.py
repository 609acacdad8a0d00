"""Explanations: equivalent-kernel CAMs of the MHEX+ heads, and Grad-CAM for segmentation as the baseline."""
