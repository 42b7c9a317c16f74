"""medmae: masked-autoencoder self-pretraining for medical images, built on MONAI and PyTorch."""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

RESOURCE_KINDS = ("configs", "tasks", "data_manifests")


def resource_dir(kind: str) -> Path:
    """The folder of ``configs``, ``tasks`` or ``data_manifests``.

    A regular install ships them inside the package (``medmae/_resources/<kind>``); an editable install or
    a source checkout finds them beside the package, at the repository root.
    """
    if kind not in RESOURCE_KINDS:
        raise ValueError(f"unknown resource {kind!r}; choose one of {RESOURCE_KINDS}")
    package = Path(__file__).resolve().parent
    for candidate in (package / "_resources" / kind, package.parent / kind):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"medmae's {kind}/ folder is missing from {package} and {package.parent}: reinstall medmae")
