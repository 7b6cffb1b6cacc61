"""APScheduler 3.x, as the daemon uses it, without asyncio in the resident process.

`apscheduler.util` imports asyncio (about 2.7 MB of the idle daemon's memory, measured with
the rest of what `mamoru run` imports) for one function, `iscoroutinefunction`, which it uses
to refuse coroutine functions on thread pools. The daemon schedules plain functions only, and
on Python 3.11+ `inspect.iscoroutinefunction` answers the same for everything but the
`@asyncio.coroutine` generators Python 3.11 no longer has. So while APScheduler is imported a
stand-in `asyncio` module that holds only that function is in sys.modules; afterwards it is
gone again, and any later `import asyncio` gets the real one. When asyncio is already loaded
(something else needed it) the real one is used.

The rest of APScheduler's imports are its floor: importlib.metadata (its version and plugin
entry points, ~1.3 MB with email and zipfile) and multiprocessing (its process pool, ~0.5 MB).
"""

from __future__ import annotations

import inspect
import sys
import types


def _import_without_asyncio() -> None:
    if "asyncio" in sys.modules or "apscheduler.util" in sys.modules:
        return
    stand_in = types.ModuleType("asyncio", "stand-in while APScheduler is imported "
                                "(mamoru.service.scheduler)")
    stand_in.iscoroutinefunction = inspect.iscoroutinefunction  # type: ignore[attr-defined]
    sys.modules["asyncio"] = stand_in
    try:
        import apscheduler.util  # noqa: F401
    finally:
        if sys.modules.get("asyncio") is stand_in:
            del sys.modules["asyncio"]


_import_without_asyncio()

from apscheduler.events import (  # noqa: E402
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobEvent,
)
from apscheduler.executors.pool import ThreadPoolExecutor  # noqa: E402
from apscheduler.schedulers.background import BackgroundScheduler  # noqa: E402
from apscheduler.triggers.date import DateTrigger  # noqa: E402
from apscheduler.triggers.interval import IntervalTrigger  # noqa: E402

__all__ = ["EVENT_JOB_ERROR", "EVENT_JOB_EXECUTED", "EVENT_JOB_MAX_INSTANCES", "EVENT_JOB_MISSED",
           "BackgroundScheduler", "DateTrigger", "IntervalTrigger", "JobEvent",
           "ThreadPoolExecutor"]
