"""Data: cases and splits, data roots, readers, manifests, MONAI pipelines, loaders, cached crops, checks,
and the synthetic demo set."""
