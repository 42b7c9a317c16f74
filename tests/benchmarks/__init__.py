"""Tests of the benchmark scripts. The scripts are imported as they run, from their own folder
(``import speed``, which imports ``harness``), so that folder goes on ``sys.path`` here."""

import sys

from tests.helpers import BENCHMARKS

sys.path.insert(0, str(BENCHMARKS))
