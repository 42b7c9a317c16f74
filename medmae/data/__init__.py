"""Data: readers, manifests and splits, MONAI pipelines, checks, and the synthetic demo set."""
