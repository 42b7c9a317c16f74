"""Import ``timm`` where ``torchvision`` cannot be imported (no wheel for this torch build).

timm imports torchvision at import time, for data transforms the models never use. When ``import
torchvision`` fails, :func:`import_timm` first serves ``torchvision`` and every ``torchvision.*`` module
as a stub whose attributes are dummy classes, so that timm's module-level imports succeed; a ViT's
forward pass runs on torch alone.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

import pytest

TIMM_HINT = 'timm is not installed: pip install --no-deps "timm==1.0.*" (plus safetensors and huggingface_hub)'


class Anything(type):
    """A class whose every public attribute is another such class: ``torchvision.x.Y.z`` all resolve."""

    def __getattr__(cls, name: str) -> type:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return Anything(name, (), {})


class StubModule(types.ModuleType):
    """A module whose missing attributes are dummy classes."""

    def __getattr__(self, name: str) -> type:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return Anything(name, (), {})


class StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves ``torchvision`` and ``torchvision.*`` as :class:`StubModule` packages."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module) -> None:
        if module.__name__ == "torchvision":
            module.__version__ = "0.0.0+stub"


def _torchvision_importable() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 -- missing, or built for another torch (raises at import)
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        return False
    return True


def import_timm() -> types.ModuleType:
    """The ``timm`` module, with a torchvision stub installed first where torchvision cannot be imported;
    ``pytest.skip`` naming the install command when timm is not installed."""
    if importlib.util.find_spec("timm") is None:
        pytest.skip(TIMM_HINT)
    if not _torchvision_importable() and not any(isinstance(f, StubFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, StubFinder())
    return importlib.import_module("timm")
