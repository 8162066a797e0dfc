"""Throwaway places to try a policy in: cgroups, network namespaces, and
processes inside them that open sockets on command.

The demo and the test suite use these; they are also handy for trying a
policy by hand. Everything is created under a name prefix and removed when
its context ends, whatever happened inside.
"""

from ebmesh.sandbox.places import throwaway_cgroup, throwaway_netns, veth_pair
from ebmesh.sandbox.processes import Agent

__all__ = ["Agent", "throwaway_cgroup", "throwaway_netns", "veth_pair"]
