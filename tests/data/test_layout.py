"""Data roots: ``--data-root`` or ``$MEDMAE_DATA/<task>``, and errors that say what layout was expected."""

from __future__ import annotations

import pytest

from medmae.data.manifests import load_split
from medmae.errors import DataError, UserError
from medmae.tasks import load_task


def test_data_root_errors_say_where_data_comes_from(tmp_path, monkeypatch):
    task = load_task("msd_hippocampus")
    monkeypatch.delenv("MEDMAE_DATA", raising=False)
    with pytest.raises(UserError, match="pass --data-root DIR or set MEDMAE_DATA") as error:
        load_split(task, None)
    assert "medicaldecathlon.com" in str(error.value) and "dataset.json" in str(error.value)
    with pytest.raises(DataError, match="no such data folder"):
        load_split(task, tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="Found instead in .*: notes.txt"):
        load_split(task, tmp_path)
    monkeypatch.setenv("MEDMAE_DATA", str(tmp_path))
    with pytest.raises(DataError, match="msd_hippocampus: no such data folder"):
        load_split(task, None)
