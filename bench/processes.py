"""The benchmark's external processes (sockperf, iperf3, HAProxy, nginx, rr), each
started inside a cgroup the run created and always killed.

A process joins its cgroup between fork and exec (it writes its own pid into
cgroup.procs), so nothing it runs ever sits in another cgroup; it also starts
its own session, so killing its process group ends any children it forks
(nginx's worker). `Launcher` registers every process on an ExitStack: they are
killed when the stack unwinds, normally, on an exception or on Ctrl-C. The
cgroup's removal (tests.support.throwaway_cgroup) kills whatever is left with
cgroup.kill.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ebmesh.runtime.cgroups import cgroup2_mount

PREFIX = "ebmesh-bench-"


def require_tool(name: str) -> str:
    """The tool's path; an error that says how to install it if it is missing."""
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed: run `make bench` (it installs it) as root")
    return found


def _join_cgroup(cgroup: Path, cpu: int | None):
    def prepare():
        os.setsid()
        if cpu is not None:  # threads and children inherit it
            os.sched_setaffinity(0, {cpu})
        with open(cgroup / "cgroup.procs", "w") as procs:
            procs.write(str(os.getpid()))

    return prepare


def _check_cgroup(cgroup: Path) -> Path:
    """Only a cgroup of this benchmark, never the root one or someone else's."""
    cgroup = Path(cgroup)
    mount = cgroup2_mount()
    relative = cgroup.relative_to(mount)  # ValueError: not under the mount
    if not relative.parts or not relative.parts[0].startswith(PREFIX):
        raise RuntimeError(f"refusing to start a process in {cgroup}: not a benchmark cgroup")
    return cgroup


@dataclass
class Started:
    name: str
    process: subprocess.Popen
    cgroup: Path
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def pids(self) -> list[int]:
        """This process and every process it forked: its process group, in its cgroup
        (which other processes of the workload share)."""
        group = []
        for pid in (int(p) for p in (self.cgroup / "cgroup.procs").read_text().split()):
            with contextlib.suppress(ProcessLookupError):
                if os.getpgid(pid) == self.process.pid:
                    group.append(pid)
        return group

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            # The leader is alive, so its process group is this process's own.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        # Children that outlived the leader (nginx's worker, briefly): found in our
        # cgroup, never by a group id alone, which the system may have handed on.
        with contextlib.suppress(FileNotFoundError):
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


class Launcher:
    """Starts processes in benchmark cgroups; every one is stopped when `stack` unwinds.
    With `cpu`, every process it starts runs on that CPU only."""

    def __init__(self, stack: contextlib.ExitStack, workdir: Path, cpu: int | None = None):
        self.stack = stack
        self.workdir = workdir
        self.cpu = cpu

    def start(
        self,
        name: str,
        command: list[str],
        cgroup: Path,
        *,
        ready: str | None = None,
        ready_port: tuple[str, int, str] | None = None,
        timeout: float = 10.0,
        cwd: Path | None = None,
    ) -> Started:
        """Start `command` in `cgroup`. Waits until its output contains `ready`, or until
        something listens on `ready_port` (address, port, "tcp"|"udp")."""
        cgroup = _check_cgroup(cgroup)
        log = self.workdir / f"{name}.log"
        handle = open(log, "w")
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                preexec_fn=_join_cgroup(cgroup, self.cpu),
                cwd=cwd or self.workdir,
            )
        finally:
            handle.close()
        started = Started(name, process, cgroup, log)
        self.stack.callback(started.stop)
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {process.returncode}: {log.read_text()[-2000:]}"
                )
            if ready is not None and ready in log.read_text(errors="replace"):
                return started
            if ready_port is not None and listening(*ready_port):
                return started
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not get ready in {timeout} s: {log.read_text()}")
            time.sleep(0.02)

    def run(self, name: str, command: list[str], cgroup: Path, timeout: float) -> str:
        """Run `command` in `cgroup` to its end; its output (stdout and stderr)."""
        cgroup = _check_cgroup(cgroup)
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=_join_cgroup(cgroup, self.cpu),
            cwd=self.workdir,
        )
        try:
            output, _ = process.communicate(timeout=timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
        if process.returncode != 0:
            raise RuntimeError(f"{name} failed ({process.returncode}): {output[-2000:]}")
        return output


def listening(address: str, port: int, protocol: str = "tcp") -> bool:
    """Whether a socket is bound to address:port (from /proc/net/tcp or udp)."""
    wanted = f"{_hex_address(address)}:{port:04X}"
    table = Path(f"/proc/net/{protocol}").read_text().splitlines()[1:]
    for line in table:
        fields = line.split()
        if fields[1] == wanted and (protocol == "udp" or fields[3] == "0A"):  # 0A: LISTEN
            return True
    return False


def _hex_address(address: str) -> str:
    return "".join(f"{int(octet):02X}" for octet in reversed(address.split(".")))


# ---- what processes cost ----------------------------------------------------------------


def rss_bytes(pids: list[int]) -> int:
    """Resident set size, summed over the processes."""
    total = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def cgroup_cpu_usec(cgroup: Path) -> int:
    """CPU time of every process that was ever in the cgroup (cpu.stat usage_usec).
    With this kernel's tick accounting (no IRQ_TIME_ACCOUNTING), softirq work done in
    a process's context, loopback's receive path among it, is charged to it."""
    for line in (cgroup / "cpu.stat").read_text().splitlines():
        if line.startswith("usage_usec "):
            return int(line.split()[1])
    raise RuntimeError(f"no usage_usec in {cgroup}/cpu.stat")


_TICK = os.sysconf("SC_CLK_TCK")


def ksoftirqd_seconds() -> float:
    """CPU time of the ksoftirqd threads: softirq work deferred out of process context,
    which no benchmark cgroup is charged for."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            text = stat.read_text()
            name = text[text.index("(") + 1 : text.rindex(")")]
            if name.startswith("ksoftirqd/"):
                fields = text[text.rindex(")") + 2 :].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICK


def system_cpu_seconds() -> dict[str, float]:
    """/proc/stat's totals over all CPUs: busy (everything but idle and iowait) and softirq."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields]
    user, nice, system, idle, iowait, irq, softirq, steal = values[:8]
    return {
        "busy": (user + nice + system + irq + softirq + steal) / _TICK,
        "softirq": softirq / _TICK,
    }
