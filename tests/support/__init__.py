"""Throwaway places to try a policy in, for the tests, the benchmarks and the demo.

Cgroups, network namespaces, veth pairs, and processes inside them that open
sockets on command (like cilium/ebpf's internal/testutils: helpers of the
test suite, not part of the installed package). Everything is created under a
name prefix and removed when its context ends, whatever happened inside.
bench/ and examples/ import this from the repository.
"""

from tests.support.places import throwaway_cgroup, throwaway_netns, veth_pair
from tests.support.processes import Agent, AgentError, MeshHost

__all__ = ["Agent", "AgentError", "MeshHost", "throwaway_cgroup", "throwaway_netns", "veth_pair"]
