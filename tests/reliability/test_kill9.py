"""kill -9 at random moments of `mamoru provision` (scripts/killnine.py, fewer kills in CI):
after each, live/<site> holds a whole, matching key and certificate pair (old or new, never
mixed, never partial), the event log is whole JSON lines, and the next run completes.
The full 200-kill run is `python scripts/killnine.py --count 200` (docs/RELIABILITY.md).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "killnine.py"
KILLS_IN_CI = 20


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("killnine", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["killnine"] = module
    spec.loader.exec_module(module)
    return module


def test_kill_nine_at_random_moments_never_leaves_a_broken_pair(tmp_path: Path) -> None:
    killnine = load_script()
    report = killnine.run(KILLS_IN_CI, workdir=tmp_path, echo=False)
    assert report.failures == [], report.summary()
    assert report.consistent == KILLS_IN_CI, report.summary()
    assert report.completed_after == KILLS_IN_CI, report.summary()
    # The kills really landed mid-run (not all after the process had finished).
    assert report.killed >= KILLS_IN_CI * 0.7, report.summary()
