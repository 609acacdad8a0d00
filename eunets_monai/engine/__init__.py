"""Training recipe pieces MONAI lacks: the deep-supervision loss factory and output selection."""
