#!/usr/bin/env python3
"""Where compile (and attach) time goes for one benchmark policy size.

    .venv/bin/python bench/profile_compile.py 100000              # phases, and GC pauses per phase
    .venv/bin/python bench/profile_compile.py 100000 --cprofile 30
    sudo .venv/bin/python bench/profile_compile.py 100000 --attach   # also attach (to a throwaway cgroup) and detach

Always a cold object cache (a fresh EBMESH_CACHE_DIR, vmlinux.h generated
into it before timing). `ebmesh.compile` pauses the cyclic collector for the
whole pipeline itself, so the GC pauses shown are those from outside it.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import policy_gen  # noqa: E402
from run import PREFIX, GcWatch, _safe_attach_target, attach_breakdown  # noqa: E402

import ebmesh  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rules", type=int, nargs="?", default=100_000)
    parser.add_argument(
        "--cprofile", type=int, metavar="N", default=0, help="print the top N functions"
    )
    parser.add_argument(
        "--attach", action="store_true", help="also attach to a throwaway cgroup (root)"
    )
    args = parser.parse_args()

    cache = Path(tempfile.mkdtemp(prefix=f"{PREFIX}cache-"))
    os.environ["EBMESH_CACHE_DIR"] = str(cache)
    try:
        from ebmesh.toolchain.vmlinux import vmlinux_header

        vmlinux_header()  # pre-warmed, as in bench/run.py
        ebmesh.compile(
            policy_gen.generate(10, "127.9.1.1", "127.9.2.1", seed=12345).text
        )  # imports, parser
        text = policy_gen.generate(args.rules, "127.10.1.1", "127.10.2.1").text
        gc.collect()
        profiler = cProfile.Profile() if args.cprofile else None
        with GcWatch() as watch:
            started = time.perf_counter()
            if profiler:
                profiler.enable()
            compiled = ebmesh.compile(text)
            if profiler:
                profiler.disable()
            compiled_at = time.perf_counter()
        phases = dict(compiled.timings)
        compile_s = compiled_at - started
        print(f"{args.rules} rules, cold cache{', under cProfile (slower)' if profiler else ''}")
        print(f"  compile: {compile_s:.3f} s")
        gc_by_phase = watch.by_phase(started, phases)
        for name, seconds in phases.items():
            print(f"    {name:<16} {seconds:7.3f} s   (GC pauses {gc_by_phase[name]:.3f} s)")
        for generation, info in watch.by_generation().items():
            if info["collections"]:
                print(
                    f"    GC generation {generation}: {info['collections']} collections, {info['seconds']:.3f} s, "
                    f"{info['objects_collected']} unreachable objects found"
                )
        if args.attach:
            from tests.support import throwaway_cgroup

            with throwaway_cgroup(("client", "server"), prefix=PREFIX) as root:
                breakdown: dict = {}
                started = time.perf_counter()
                with attach_breakdown(breakdown):
                    attachment = compiled.attach(_safe_attach_target(root), events="denied")
                attached = time.perf_counter() - started
                with attachment:
                    ids = attachment.program_ids()
                print(
                    f"  attach: {attached:.3f} s (load+verify {breakdown['load_verify']:.3f} s, "
                    f"map fill {breakdown['map_fill']:.3f} s); programs {ids}"
                )
                print(f"  compile+attach: {compile_s + attached:.3f} s")
        if profiler:
            stats = pstats.Stats(profiler)
            stats.sort_stats("cumulative").print_stats(args.cprofile)
            stats.sort_stats("tottime").print_stats(args.cprofile)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
