"""Does this process have what loading eBPF programs takes?"""

from __future__ import annotations

from ..errors import EnvironmentProblem

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_BPF = 39


def effective_capabilities() -> int:
    """The CapEff mask of this process (0 if /proc is unreadable)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def has_bpf_privileges() -> bool:
    caps = effective_capabilities()
    return bool(caps & (1 << CAP_SYS_ADMIN)) or bool(caps & (1 << CAP_BPF))


def require_bpf_privileges() -> None:
    """Raise EnvironmentProblem unless the process may load BPF programs."""
    if not has_bpf_privileges():
        raise EnvironmentProblem(
            "loading eBPF programs needs root (CAP_SYS_ADMIN, or CAP_BPF with CAP_NET_ADMIN "
            "for cgroup programs): run ebmesh as root, e.g. with sudo"
        )
