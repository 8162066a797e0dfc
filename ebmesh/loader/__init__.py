"""ebmesh's thin ctypes layer over the system libbpf.so.1 (libbpf 1.1 API).

Nothing outside this package calls libbpf. Failures of libbpf or the kernel
raise `ebmesh.errors.LibbpfError` (errno plus libbpf's log, which holds the
verifier log when a program is rejected); a machine that lacks libbpf,
privileges or bpffs raises `ebmesh.errors.EnvironmentProblem`.

Objects (`BpfObject`) own their maps (`ObjectMap`) and programs
(`BpfProgram`); a map reopened from a pin is a `MapHandle` that owns its fd;
links (`BpfLink`) outlive the object whose program they attach.
"""

from .bpffs import bpffs_mounted, ensure_bpffs
from .constants import BPF_ANY, BPF_NOEXIST, AttachType, MapType, ProgType
from .libbpf import LIBBPF_SONAME, libbpf_version
from .links import BpfLink, LinkInfo, detach_link, link_ids, link_info
from .maps import MapAccess, MapHandle, ObjectMap, possible_cpus
from .object import BpfObject
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
    "LIBBPF_SONAME",
    "libbpf_version",
    "BPF_ANY",
    "BPF_NOEXIST",
    "AttachType",
    "BpfLink",
    "LinkInfo",
    "BpfObject",
    "BpfProgram",
    "MapAccess",
    "MapHandle",
    "MapType",
    "ObjectMap",
    "ProgType",
    "ProgramInfo",
    "ProgramStats",
    "RingBuffer",
    "bpffs_mounted",
    "detach_link",
    "link_ids",
    "link_info",
    "enable_run_time_stats",
    "ensure_bpffs",
    "possible_cpus",
    "program_info",
    "query_cgroup",
]
