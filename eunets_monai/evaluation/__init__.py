"""Agreement and usefulness metrics for uncertainty maps."""
