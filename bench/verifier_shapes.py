#!/usr/bin/env python3
"""Attach time and verifier work against a policy's *shape*, not its size.

    sudo .venv/bin/python bench/verifier_shapes.py 8 4            # 8 nested CIDRs, 4 client->server ports
    sudo .venv/bin/python bench/verifier_shapes.py 8 4 --cidr-to-cidr

The policy: `depth` nested prefixes 10.0.0.0/8 ... 10.0.0.0/(8+depth-1),
each used as a destination (client -> CIDR) and as a source (CIDR -> server),
with `--cidr-to-cidr` also as both (CIDR -> CIDR), plus `ports` rules
client -> server on distinct ports (the length of one port table). All of it
is valid: the compiler allows nesting up to 16. The shape constants
(MAX_SRC/DST_PREFIX_NESTING, PORT_SEARCH_STEPS, POLICY_PAIR_KINDS) bound the
loops of decide(), and the verifier walks them all. Prints the shape, the
attach time and connect4's verified instructions, or the load failure
(E2BIG: the verifier's 1M-instruction limit).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ebmesh  # noqa: E402
from ebmesh.loader import program_info  # noqa: E402
from tests.support import throwaway_cgroup  # noqa: E402

PREFIX = "ebmesh-bench-"


def policy(depth: int, ports: int, cidr_to_cidr: bool) -> str:
    rules = []
    for i in range(depth):
        cidr = f"10.0.0.0/{8 + i}"
        rules.append(f"allow client -> {cidr} port {1000 + i}/tcp")
        rules.append(f"allow {cidr} -> server port {2000 + i}/tcp")
        if cidr_to_cidr:
            rules.append(f"allow {cidr} -> {cidr} port {3000 + i}/tcp")
    rules += [f"allow client -> server port {10000 + 2 * j}/tcp" for j in range(ports)]
    body = "\n".join(f"    {rule}" for rule in rules)
    return (
        "mesh shapes {\n"
        '    workload client { cgroup "client" address 127.40.1.1 }\n'
        '    workload server { cgroup "server" address 127.40.2.1 }\n'
        f"{body}\n}}\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("depth", type=int, help="nested prefixes (1-16)")
    parser.add_argument("ports", type=int, help="client -> server rules on distinct ports")
    parser.add_argument("--cidr-to-cidr", action="store_true", help="also CIDR -> CIDR rules")
    args = parser.parse_args()
    compiled = ebmesh.compile(policy(args.depth, args.ports, args.cidr_to_cidr))
    shape = compiled.shape
    print(
        f"depth {args.depth}, ports {args.ports}{', cidr->cidr' if args.cidr_to_cidr else ''}: "
        f"nesting src/dst {shape.max_src_prefix_nesting}/{shape.max_dst_prefix_nesting}, "
        f"port search steps {shape.port_search_steps}, pair kinds {shape.pair_kinds:#x}: ",
        end="",
        flush=True,
    )
    with throwaway_cgroup(("client", "server"), prefix=PREFIX) as root:
        started = time.perf_counter()
        try:
            with compiled.attach(root, events="none") as attachment:
                seconds = time.perf_counter() - started
                insns = program_info(attachment.program_ids()["ebmesh_connect4"]).verified_insns
                print(f"attach {seconds:.2f} s, connect4 verified {insns} insns")
        except ebmesh.EbmeshError as error:
            seconds = time.perf_counter() - started
            print(f"attach FAILED after {seconds:.2f} s: {str(error).splitlines()[0][:140]}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
