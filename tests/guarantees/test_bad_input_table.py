"""The bad-input catalogue (``tests/guarantees/bad_input_catalogue.py``): every kind exits as it should,
says what is wrong (naming the file where one is at fault), prints no traceback, leaves nothing behind
when it refuses and changes no input; and docs/explanation/bad-input.md shows exactly these outcomes."""

from __future__ import annotations

import re

import pytest

from tests.guarantees.bad_input_catalogue import TABLE, run_all, table

MINIMUM_KINDS = 90


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    return run_all(tmp_path_factory.mktemp("bad_input"))


@pytest.mark.slow
def test_every_kind_is_handled_well(outcomes):
    assert len(outcomes) >= MINIMUM_KINDS
    wrong = [
        f"{o.kind.name} ({o.kind.command}): exit {o.code}, said {o.message!r}"
        for o in outcomes
        if o.code != o.kind.code or not re.search(o.kind.said, o.output) or o.kind.names not in o.output
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.slow
def test_no_traceback_nothing_left_behind_no_input_changed(outcomes):
    assert [o.kind.name for o in outcomes if o.traceback] == []
    assert [(o.kind.name, o.kind.command, o.left_behind) for o in outcomes if o.left_behind] == []
    assert [(o.kind.name, o.kind.command, o.changed) for o in outcomes if o.changed] == []


@pytest.mark.slow
def test_the_table_in_the_docs_is_current(outcomes):
    assert TABLE.read_text(encoding="utf-8") == table(outcomes), (
        "rewrite it with: python -m tests.guarantees.bad_input_catalogue"
    )
