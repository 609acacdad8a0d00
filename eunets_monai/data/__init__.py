"""MSD datalists, splits and MONAI transform presets per task."""
