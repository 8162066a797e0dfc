"""The datapath's limits, which the language checks enforce before anything is built."""

# How many rule prefixes of one side may nest around a single address. The
# datapath walks them all for a verdict, so the bound keeps verdicts cheap.
MAX_PREFIX_NESTING = 16

# A backend's weight: the alias tables' thresholds are exact in 32 bits for
# any sum of this many backends' weights.
MAX_WEIGHT = 65535

# How deep below the attach cgroup a socket's cgroup may sit and still be told
# apart (MAX_CGROUP_NESTING in bpf_src/identity.h; a test holds both equal).
MAX_CGROUP_NESTING = 32

# Services of one mesh: a socket connected to a service carries the service's
# index + 1 in 12 bits of its priority (bpf_src/ebmesh_types.h).
MAX_SERVICES = 4095

# How many backends an attachment's services may hold in all (`backend_capacity`).
# Each takes a slot of the backends array and two of the slot table, allocated
# when the object is loaded: at this bound, about 80 MB and a second to load.
MAX_BACKEND_CAPACITY = 1 << 20
