"""ebmesh's thin ctypes layer over the system libbpf.so.1 (libbpf 1.1 API).

Nothing outside this package calls libbpf. Failures of libbpf or the kernel
raise `ebmesh.errors.LibbpfError` (errno plus libbpf's log, which holds the
verifier log when a program is rejected); a machine that lacks libbpf,
privileges or bpffs raises `ebmesh.errors.EnvironmentProblem`.
"""

from .bpffs import BPFFS_DEFAULT, bpffs_mounted, ensure_bpffs
from .constants import (
    BPF_ANY,
    BPF_CGROUP_GETSOCKOPT,
    BPF_CGROUP_INET4_BIND,
    BPF_CGROUP_INET4_CONNECT,
    BPF_CGROUP_INET4_GETPEERNAME,
    BPF_CGROUP_INET4_GETSOCKNAME,
    BPF_CGROUP_INET4_POST_BIND,
    BPF_CGROUP_INET6_BIND,
    BPF_CGROUP_INET6_CONNECT,
    BPF_CGROUP_INET6_GETPEERNAME,
    BPF_CGROUP_INET6_GETSOCKNAME,
    BPF_CGROUP_INET6_POST_BIND,
    BPF_CGROUP_INET_EGRESS,
    BPF_CGROUP_INET_INGRESS,
    BPF_CGROUP_INET_SOCK_CREATE,
    BPF_CGROUP_INET_SOCK_RELEASE,
    BPF_CGROUP_SETSOCKOPT,
    BPF_CGROUP_SOCK_OPS,
    BPF_CGROUP_UDP4_RECVMSG,
    BPF_CGROUP_UDP4_SENDMSG,
    BPF_CGROUP_UDP6_RECVMSG,
    BPF_CGROUP_UDP6_SENDMSG,
    BPF_EXIST,
    BPF_F_LOCK,
    BPF_NOEXIST,
    PERCPU_MAP_TYPES,
    AttachType,
    MapType,
    ProgType,
)
from .libbpf import load as load_libbpf
from .links import BpfLink
from .maps import BpfMap, possible_cpus
from .object import BpfObject
from .privileges import has_bpf_privileges, require_bpf_privileges
from .programs import (
    BpfProgram,
    ProgramInfo,
    ProgramStats,
    enable_run_time_stats,
    program_info,
    query_cgroup,
)
from .ringbuf import RingBuffer

__all__ = [
    "BPFFS_DEFAULT",
    "BPF_ANY",
    "BPF_CGROUP_GETSOCKOPT",
    "BPF_CGROUP_INET4_BIND",
    "BPF_CGROUP_INET4_CONNECT",
    "BPF_CGROUP_INET4_GETPEERNAME",
    "BPF_CGROUP_INET4_GETSOCKNAME",
    "BPF_CGROUP_INET4_POST_BIND",
    "BPF_CGROUP_INET6_BIND",
    "BPF_CGROUP_INET6_CONNECT",
    "BPF_CGROUP_INET6_GETPEERNAME",
    "BPF_CGROUP_INET6_GETSOCKNAME",
    "BPF_CGROUP_INET6_POST_BIND",
    "BPF_CGROUP_INET_EGRESS",
    "BPF_CGROUP_INET_INGRESS",
    "BPF_CGROUP_INET_SOCK_CREATE",
    "BPF_CGROUP_INET_SOCK_RELEASE",
    "BPF_CGROUP_SETSOCKOPT",
    "BPF_CGROUP_SOCK_OPS",
    "BPF_CGROUP_UDP4_RECVMSG",
    "BPF_CGROUP_UDP4_SENDMSG",
    "BPF_CGROUP_UDP6_RECVMSG",
    "BPF_CGROUP_UDP6_SENDMSG",
    "BPF_EXIST",
    "BPF_F_LOCK",
    "BPF_NOEXIST",
    "PERCPU_MAP_TYPES",
    "AttachType",
    "BpfLink",
    "BpfMap",
    "BpfObject",
    "BpfProgram",
    "MapType",
    "ProgType",
    "ProgramInfo",
    "ProgramStats",
    "RingBuffer",
    "bpffs_mounted",
    "enable_run_time_stats",
    "ensure_bpffs",
    "has_bpf_privileges",
    "load_libbpf",
    "possible_cpus",
    "program_info",
    "query_cgroup",
    "require_bpf_privileges",
]
