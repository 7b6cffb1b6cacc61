"""The daemon's worker process: a run of due sites happens in a short-lived child process, so
the resident daemon keeps only the scheduler, the config and one plan per site, and the memory
a renewal needs (the ACME stack, cryptography, the TLS probes, the install) is given back to
the system when the worker exits. A worker that crashes takes only its own sites' runs with it.

The child is `python -m mamoru.service.worker` (a fresh exec of the same interpreter: no fork
of the threaded daemon, nothing inherited but the environment and stderr, which goes to the
same journal). They talk over the child's stdin and stdout, in frames of a 4-byte big-endian
length and a pickle:

  daemon -> worker  ("hello", settings, language, log level)   once, first
                    ("site", name)                              run this site's pipeline now
                    ("end",)                                    no more sites: finish and exit
  worker -> daemon  ("event", kind, site, message, fields, time, level)   every event
                    ("done", name, "done" | "cancelled")                  a site's run is over

The same module also reads the config for the daemon (`load_settings`): `python -m
mamoru.service.worker --config PATH` parses and validates it and sends back ("settings",
settings) or ("problems", [ConfigProblem, ...]). Composing the YAML of 1,000 sites with line
marks takes about 5 MB at its peak, and a process does not give that back to the system (the
allocator's arenas stay fragmented); unpickling the result takes what the `Settings` need
(about 0.8 MB). The daemon reads its config that way at start and at every SIGHUP.

EOF on the worker's stdin without ("end",) means the daemon died: the worker exits at once,
as the daemon's own threads would have, and the next daemon recovers the interrupted attempt
(pipeline.recover_interrupted). The worker's events go to the daemon, which hands them to its
own sinks (the event log, the journal, metrics, alerts, the fleet outbox) in arrival order:
one writer per sink, the event log's lock and the alert record stay in the resident process.
The daemon unpickles only plain values (`_PlainUnpickler`): strings, numbers, lists, dicts,
datetimes.

Lifetime (resident side, `Workers`): a site's job hands its name to the current worker (one is
started when there is none) and waits for its "done". A worker serves the sites of a burst; it
is told to end once it has nothing to do for LINGER_SECONDS, or, when it has been handed
MAX_SITES sites or is MAX_AGE_SECONDS old, as soon as its last site is done (later sites go to
a new one). The CA sees at most `acme.max_concurrent_orders` sites at once in all workers
together: only that many site jobs run in the daemon, and each waits for its worker.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mamoru.app import App
    from mamoru.config.model import Settings

log = logging.getLogger(__name__)

# A worker with nothing to do waits this long for the next due site before it is told to end.
LINGER_SECONDS = 2.0
# A worker takes no more sites after this many, or after this age (its memory is bounded by a
# run of sites, however long the daemon stays busy).
MAX_SITES = 100
MAX_AGE_SECONDS = 300.0
# Worker exit status when its stdin closed without ("end",): the daemon is gone.
EXIT_ORPHANED = 70
# Environment the worker must not inherit: it never talks to systemd (NotifyAccess=main).
_NOT_INHERITED = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS",
                  "LISTEN_PID", "LISTEN_FDNAMES")
_HEADER = struct.Struct(">I")
FRAME_MAX = 64 * 1024 * 1024


# -- frames -----------------------------------------------------------------------------------


def write_frame(stream: IO[bytes], message: tuple[Any, ...]) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _read_exactly(stream: IO[bytes], size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_frame(stream: IO[bytes], *, plain: bool = False) -> tuple[Any, ...] | None:
    """The next message, or None at EOF (or a torn frame: the writer died mid-way).
    `plain`: accept plain values only (the daemon reading what a worker sent)."""
    header = _read_exactly(stream, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    if size > FRAME_MAX:
        raise ValueError(f"worker frame of {size} bytes")
    data = _read_exactly(stream, size)
    if data is None:
        return None
    # The worker trusts the daemon that started it (its parent, the same code); the daemon
    # trusts a worker with plain values only.
    message = (_PlainUnpickler(io.BytesIO(data)).load() if plain
               else pickle.loads(data))  # noqa: S301
    if not isinstance(message, tuple) or not message:
        raise ValueError("malformed worker frame")
    return message


_PLAIN_CLASSES = {("datetime", "datetime"): datetime, ("datetime", "timezone"): timezone,
                  ("datetime", "timedelta"): timedelta, ("datetime", "date"): date}


class _PlainUnpickler(pickle.Unpickler):
    """Loads builtins and datetimes only: a worker's message can never make the daemon import
    a module (and so never brings the ACME stack or cryptography into the resident process)."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PLAIN_CLASSES[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"worker sent {module}.{name}") from None


def load_settings(path: str, *, argv: list[str] | None = None) -> Settings:
    """The config at `path`, read and validated in a child process (see the module's
    docstring); raises ConfigError with every problem, as `load_config` does. If the child
    cannot do it (it cannot start, or dies), the config is read in this process instead."""
    from mamoru.config import load_config
    from mamoru.config.cache import SettingsUnpickler
    from mamoru.errors import ConfigError

    command = [*(argv or [sys.executable, "-m", "mamoru.service.worker"]), "--config", path]
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True,
                              env=env, timeout=120, check=False)
    except (OSError, subprocess.SubprocessError) as error:
        log.warning("reading the config in a child process failed (%s); reading it here",
                    error)
        return load_config(path, cached=True)
    message: Any = None
    if done.returncode == 0 and len(done.stdout) > _HEADER.size:
        try:
            message = SettingsUnpickler(io.BytesIO(done.stdout[_HEADER.size:])).load()
        except Exception as error:  # a torn or foreign answer: read it here
            log.warning("the config reader's answer is unreadable (%s)", error)
    if isinstance(message, tuple) and len(message) == 2 and message[0] == "settings":
        settings: Settings = message[1]
        return settings
    if isinstance(message, tuple) and len(message) == 2 and message[0] == "problems":
        raise ConfigError(list(message[1]))
    log.warning("the config reader exited with status %s: %s; reading the config here",
                done.returncode, done.stderr.decode(errors="replace").strip()[-500:])
    return load_config(path)


def _read_config(path: str, out: IO[bytes]) -> int:
    """`--config PATH`: send the parsed settings (or the problems) to stdout."""
    from mamoru.config import load_config
    from mamoru.errors import ConfigError

    try:
        settings = load_config(path, cached=True)
    except ConfigError as error:
        write_frame(out, ("problems", list(error.problems)))
        return 0
    write_frame(out, ("settings", settings))
    return 0


def plain(value: Any) -> Any:
    """`value` as plain data the daemon accepts (what the event log would write, datetimes
    kept as they are)."""
    if isinstance(value, str | int | float | bool | datetime | date | timedelta) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    return str(value)


# -- the daemon's side ----------------------------------------------------------------------------


@dataclass
class Result:
    """How a site's run in a worker ended: "done", "cancelled", or "lost" (the worker died
    before reporting; `detail` says how)."""

    status: str
    detail: str = ""


class _Waiter:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.result = Result("lost", "the worker process ended")

    def set(self, result: Result) -> None:
        if not self.done.is_set():
            self.result = result
            self.done.set()


def describe_exit(code: int | None) -> str:
    if code is None:
        return "the worker process stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the worker process was killed by {name}"
    return f"the worker process exited with status {code}"


class Worker:
    """One worker process, seen from the daemon."""

    def __init__(self, argv: list[str], hello: tuple[Any, ...], forward: Callable[..., None],
                 on_exit: Callable[[Worker], None]) -> None:
        env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
        self._forward = forward
        self._on_exit = on_exit
        self._lock = threading.Lock()
        self.pending: dict[str, _Waiter] = {}
        self.handed = 0
        self.born = time.monotonic()
        self.closed = False
        self.retired = False
        self._linger: threading.Timer | None = None
        # close_fds (the default): the worker inherits no socket or lock of the daemon's.
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._stdin: IO[bytes] = self.proc.stdin
        self._stdout: IO[bytes] = self.proc.stdout
        self._send(hello)
        self._reader = threading.Thread(target=self._read, name=f"worker-{self.proc.pid}",
                                        daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _send(self, message: tuple[Any, ...]) -> bool:
        try:
            write_frame(self._stdin, message)
        except (OSError, ValueError):  # it died (EPIPE), or its stdin is closed already
            return False
        return True

    def accepts(self) -> bool:
        """Whether this worker may take another site."""
        return (not self.closed and not self.retired and self.proc.poll() is None
                and self.handed < MAX_SITES and time.monotonic() - self.born < MAX_AGE_SECONDS)

    def submit(self, name: str) -> _Waiter | None:
        """Hand site `name` over; None when this worker is ending or gone (the site was not
        handed over: give it to another one)."""
        waiter = _Waiter()
        with self._lock:
            if self.closed:  # its linger ran out, or it died, since it was picked
                return None
            if self._linger is not None:
                self._linger.cancel()
                self._linger = None
            if not self._send(("site", name)):
                self.closed = True  # it died: its reader thread reports the rest
                return None
            self.pending[name] = waiter
            self.handed += 1
        return waiter

    def _fail(self, name: str, result: Result) -> None:
        with self._lock:
            waiter = self.pending.pop(name, None)
        if waiter is not None:
            waiter.set(result)

    def idle(self) -> None:
        """Called after a site's run is over: end the worker if it has nothing left to do (at
        once when it takes no more sites, else after LINGER_SECONDS)."""
        with self._lock:
            if self.pending or self.closed:
                return
            if not self.accepts():
                self._close_locked()
                return
            if self._linger is None:
                self._linger = threading.Timer(LINGER_SECONDS, self._close_if_idle)
                self._linger.daemon = True
                self._linger.start()

    def _close_if_idle(self) -> None:
        with self._lock:
            self._linger = None
            if not self.pending and not self.closed:
                self._close_locked()

    def close(self) -> None:
        """No more sites: it finishes the ones it has, then exits."""
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self._send(("end",))
        with contextlib.suppress(OSError):
            self._stdin.close()

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # reaped meanwhile
                self.proc.send_signal(signum)

    def _read(self) -> None:
        try:
            while True:
                try:
                    message = read_frame(self._stdout, plain=True)
                except (ValueError, pickle.UnpicklingError, EOFError) as error:
                    log.error("worker %s sent something unreadable: %s", self.pid, error)
                    self.signal(signal.SIGKILL)
                    break
                if message is None:
                    break
                try:
                    if message[0] == "event":
                        self._forward(*message[1:])
                    elif message[0] == "done" and len(message) == 3:
                        self._fail(str(message[1]), Result(str(message[2])))
                        self.idle()
                except Exception:  # keep reading: a worker blocked on a full pipe never exits
                    log.exception("worker %s: message %r", self.pid, message[:2])
        finally:
            code = self.proc.wait()  # every file of the worker is closed: its locks are free
            self._stdout.close()
            with self._lock:
                self.closed = True
                if self._linger is not None:
                    self._linger.cancel()
                    self._linger = None
                lost, self.pending = self.pending, {}
                with contextlib.suppress(OSError):
                    self._stdin.close()
            for waiter in lost.values():
                waiter.set(Result("lost", describe_exit(code)))
            if lost or code not in (0, None):
                log.warning("worker %s: %s (%d site run%s lost)", self.pid,
                            describe_exit(code), len(lost), "" if len(lost) == 1 else "s")
            self._on_exit(self)

    def join(self, timeout: float | None = None) -> None:
        self._reader.join(timeout)


class Workers:
    """The daemon's workers: hands sites to them and tracks them until they exit."""

    def __init__(self, app: App, *, argv: list[str] | None = None) -> None:
        self.app = app
        self.argv = argv or [sys.executable, "-m", "mamoru.service.worker"]
        self._lock = threading.Lock()
        self._current: Worker | None = None
        self._alive: set[Worker] = set()
        self._stopping = False
        self.started = 0  # workers started so far (for tests and the leak run)

    def run(self, name: str) -> Result:
        """Run site `name`'s pipeline in a worker; blocks until it is over."""
        for _ in range(3):
            with self._lock:
                if self._stopping:
                    return Result("cancelled")
                worker = self._current
                if worker is None or not worker.accepts():
                    if worker is not None:
                        worker.retired = True
                        worker.idle()
                    try:
                        worker = self._start()
                    except OSError as error:
                        return Result("lost", f"the worker process could not start: {error}")
            waiter = worker.submit(name)
            if waiter is not None:
                waiter.done.wait()
                return waiter.result
            with self._lock:  # it ended meanwhile: the next try starts a new one
                if self._current is worker:
                    self._current = None
        return Result("lost", "no worker process took the site")

    def _start(self) -> Worker:
        """With `_lock` held: a new current worker."""
        from mamoru import i18n

        hello = ("hello", self.app.settings, i18n.language(),
                 logging.getLogger().getEffectiveLevel())
        worker = Worker(self.argv, hello, self._forward, self._exited)
        self._current = worker
        self._alive.add(worker)
        self.started += 1
        return worker

    def _forward(self, kind: str, site: str | None, message: str, fields: dict[str, Any],
                 when: datetime, level: int) -> None:
        from mamoru.observe.events import Event

        self.app.events.forward(Event(kind, site, message, fields, time=when, level=level))

    def _exited(self, worker: Worker) -> None:
        with self._lock:
            self._alive.discard(worker)
            if self._current is worker:
                self._current = None

    def retire(self) -> None:
        """The settings changed: the next site goes to a new worker (the current one finishes
        what it has with the settings it was started with)."""
        with self._lock:
            worker, self._current = self._current, None
        if worker is not None:
            worker.retired = True
            worker.idle()

    def alive(self) -> list[Worker]:
        with self._lock:
            return list(self._alive)

    def stop(self) -> None:
        """The daemon is stopping: no new worker, and SIGTERM to those running (their waits
        end with `Cancelled`; each reports its sites and is then told to end)."""
        with self._lock:
            self._stopping = True
        self.signal_all(signal.SIGTERM)

    def signal_all(self, signum: int) -> None:
        for worker in self.alive():
            worker.signal(signum)

    def close_all(self) -> None:
        with self._lock:
            self._current = None
        for worker in self.alive():
            worker.close()

    def wait(self, timeout: float) -> bool:
        """Wait until every worker has exited (True) or `timeout` passes (False)."""
        deadline = time.monotonic() + timeout
        for worker in self.alive():
            worker.join(max(0.0, deadline - time.monotonic()))
        return not self.alive()


# -- the worker's side --------------------------------------------------------------------------


class _ForwardSink:
    """The worker's one event sink: every event goes to the daemon."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        # OSError/ValueError: the daemon is gone, nobody to tell.
        with self._lock, contextlib.suppress(OSError, ValueError):
            write_frame(self._out, message)

    def emit(self, event: Any) -> None:
        self.send(("event", event.kind, event.site, event.message, plain(event.fields),
                   event.time, event.level))


def serve(inp: IO[bytes], out: IO[bytes]) -> int:
    """The worker: read the hello, then run each site handed over until ("end",)."""
    # The hello first, before the pipeline's imports: the daemon's job thread is writing it.
    hello = read_frame(inp)
    if hello is None or hello[0] != "hello":
        return EXIT_ORPHANED

    from concurrent.futures import ThreadPoolExecutor

    from mamoru import i18n
    from mamoru.app import build_app
    from mamoru.errors import Cancelled
    from mamoru.pipeline import provision
    settings: Settings = hello[1]
    i18n.setup(str(hello[2]))  # the daemon's language, whatever chose it
    logging.basicConfig(level=int(hello[3]), format="%(levelname)s %(name)s: %(message)s")
    sink = _ForwardSink(out)
    app = build_app(settings, sinks=[sink], stderr=False, event_log=False, observers=False)
    sites = {site.name: site for site in settings.sites}

    def on_term(_signum: int, _frame: Any) -> None:  # the daemon is stopping: cancel the waits
        app.stop.set()

    signal.signal(signal.SIGTERM, on_term)
    for ignored in (signal.SIGINT, signal.SIGHUP):  # the daemon decides; it tells us
        signal.signal(ignored, signal.SIG_IGN)

    def run_one(name: str) -> None:
        status = "done"
        try:
            site = sites.get(name)
            if site is None:
                log.error("worker: site %s is not in the settings it was given", name)
            else:
                outcome = provision(site, app)
                if isinstance(outcome.error, Cancelled):
                    status = "cancelled"
        except BaseException:  # provision never raises for a site; a bug must still answer
            log.exception("worker: site %s", name)
        finally:
            sink.send(("done", name, status))

    pool = ThreadPoolExecutor(max(1, settings.acme.max_concurrent_orders))
    while True:
        message = read_frame(inp)
        if message is None:  # the daemon died: stop as it would have (its successor recovers)
            sys.stderr.flush()
            os._exit(EXIT_ORPHANED)
        if message[0] == "end":
            break
        if message[0] == "site":
            pool.submit(run_one, str(message[1]))
    pool.shutdown(wait=True)
    app.events.close()
    app.reset_session()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    # The protocol owns fd 1; anything printed by a library goes to stderr (the journal).
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    if len(args) == 2 and args[0] == "--config":
        return _read_config(args[1], out)
    return serve(sys.stdin.buffer, out)


if __name__ == "__main__":
    try:
        code = main()
    finally:
        import gc

        gc.freeze()  # no last collection over every live object at exit (see cli.console)
    sys.exit(code)
