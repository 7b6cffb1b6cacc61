"""A Debian 12 machine booted under a real systemd (systemd-nspawn), for the systemd suite.

The root file system is built once by scripts/systemd-rootfs.sh and cached; every boot starts
from it pristine (`--volatile=overlay`: writes go to a tmpfs). The container shares the host's
network (a Pebble on the host's 127.0.0.1 is reachable from inside, and the container's nginx
and Apache on 127.0.0.x are reachable from here), with `--register=no --keep-unit` and a cgroup
of its own (the host's PID 1 is not systemd: ../shared notes, SYSTEMD-NOTES.md). Commands run
inside with nsenter into the container's PID 1; files are read and written through
/proc/<PID 1>/root.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parents[2]
NSPAWN = "/usr/bin/systemd-nspawn"
NSENTER = "/usr/bin/nsenter"
CGROUP_ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup/systemd"))
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class ContainerError(RuntimeError):
    pass


def rootfs() -> Path:
    """The cached rootfs (built now when missing: about a minute, once per machine)."""
    out = subprocess.run(["bash", str(REPO / "scripts/systemd-rootfs.sh")], check=False,
                         capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise ContainerError(f"scripts/systemd-rootfs.sh failed:\n{out.stderr[-4000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def _join_cgroups(dirs: list[Path]) -> None:  # runs in the child before exec
    for directory in dirs:
        (directory / "cgroup.procs").write_text("0\n")


class Container:
    def __init__(self, root: Path, log: Path) -> None:
        self.root = root
        self.log = log
        self.name = f"mamoru-test-{uuid.uuid4().hex[:8]}"
        self.cgroups = [base / self.name for base in CGROUP_ROOTS if base.is_dir()]
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 90) -> Container:
        for directory in self.cgroups:
            directory.mkdir()
        argv = [NSPAWN, "--quiet", "--boot", f"--directory={self.root}", "--volatile=overlay",
                "--register=no", "--keep-unit", f"--machine={self.name}",
                "--console=passive"]
        cgroups = list(self.cgroups)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=lambda: _join_cgroups(cgroups), start_new_session=True)
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ContainerError(f"systemd-nspawn exited ({self.proc.returncode}):\n"
                                     f"{self.log.read_text(errors='replace')[-3000:]}")
            self.leader = self.leader or self._find_leader()
            if self.leader:
                state = self.run(["systemctl", "is-system-running"], check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return self
            time.sleep(0.2)
        raise ContainerError(f"the container did not boot in {timeout} s (state {state!r}):\n"
                             f"{self.log.read_text(errors='replace')[-3000:]}")

    def _find_leader(self) -> int:
        assert self.proc is not None
        todo, seen = [self.proc.pid], set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            nspid = [line.split()[1:] for line in status.splitlines()
                     if line.startswith("NSpid:")]
            if pid != self.proc.pid and nspid and nspid[0][-1] == "1":
                return pid
            todo.extend(int(c) for c in children)
        return 0

    def stop(self) -> None:
        """An orderly shutdown (SIGTERM to nspawn), SIGKILL after 30 s; cgroups removed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        for directory in self.cgroups:
            for _ in range(50):
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)

    def __enter__(self) -> Container:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ---- inside ------------------------------------------------------------------------------

    def run(self, argv: list[str], *, check: bool = True, timeout: float = 180,
            input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run argv inside (as root, clean environment); check=True raises with its output."""
        full = [NSENTER, "-t", str(self.leader), "-a", "-r", "-w", "env", "-i", f"PATH={PATH}",
                "LANG=C.UTF-8", "SYSTEMD_COLORS=0", "SYSTEMD_PAGER=", *argv]
        result = subprocess.run(full, capture_output=True, text=True, timeout=timeout,
                                input=input_text, check=False)
        if check and result.returncode != 0:
            raise ContainerError(f"inside: {argv} exited {result.returncode}\n"
                                 f"--- stdout ---\n{result.stdout[-3000:]}\n"
                                 f"--- stderr ---\n{result.stderr[-3000:]}")
        return result

    def path(self, inside: str) -> Path:
        """A path inside, as the host sees it (through the container's PID 1)."""
        return Path(f"/proc/{self.leader}/root") / inside.lstrip("/")

    def write(self, inside: str, text: str, mode: int = 0o644) -> None:
        target = self.path(inside)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        target.chmod(mode)

    def read(self, inside: str) -> str:
        return self.path(inside).read_text(encoding="utf-8")

    def show(self, unit: str, prop: str) -> str:
        return self.run(["systemctl", "show", "-P", prop, unit]).stdout.strip()
