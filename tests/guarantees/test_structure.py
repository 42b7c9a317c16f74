"""Tests mirror the package: every module of ``medmae/`` has a test file of its own name in the mirrored
folder (``medmae/models/unetr.py`` -> ``tests/models/test_unetr.py``)."""

from __future__ import annotations

from tests.helpers import ROOT


def mirrored_test(module: str) -> str:
    """``models/unetr.py`` -> ``tests/models/test_unetr.py``."""
    folder, _, name = module.rpartition("/")
    return "/".join(["tests", *([folder] if folder else []), f"test_{name}"])


def test_every_module_has_its_test_file():
    modules = [
        path.relative_to(ROOT / "medmae").as_posix()
        for path in sorted((ROOT / "medmae").rglob("*.py"))
        if path.name not in ("__init__.py", "__main__.py")
    ]
    assert [mirrored_test(m) for m in modules if not (ROOT / mirrored_test(m)).is_file()] == []


def test_the_mirror_rule():
    assert mirrored_test("models/unetr.py") == "tests/models/test_unetr.py"
    assert mirrored_test("config.py") == "tests/test_config.py"
