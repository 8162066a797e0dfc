"""The pipeline: policy text -> AST -> checks -> IR -> tables -> C -> object.

Each phase lives in its own package; this module only runs them in order
and keeps what each produced, with how long it took.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ebmesh.codegen.header import render_policy_header
from ebmesh.codegen.map_contents import encode_tables
from ebmesh.datapath.image import DatapathImage
from ebmesh.ir.lowering import lower
from ebmesh.language.ast import PolicyFile
from ebmesh.language.gc_pause import cyclic_gc_paused
from ebmesh.language.loading import parse_and_check
from ebmesh.language.lower import lower_to_ir
from ebmesh.policy import CompiledPolicy
from ebmesh.resources import bpf_source_dir
from ebmesh.toolchain.clang import build_object

MAIN_SOURCE = "ebmesh.bpf.c"
GENERATED_HEADER = "policy.h"


# The phases, in order, as `timings` and a progress callback name them.
PHASES = ("parse_and_check", "ir", "tables", "clang", "encode")


def compile(  # noqa: A001 - the API's name
    policy: str | Path | PolicyFile,
    *,
    filename: str = "<policy>",
    progress: Callable[[str], None] | None = None,
) -> CompiledPolicy:
    """Compile a policy (source text, a file path, or a parsed `PolicyFile`).

    `filename` names policy text in diagnostics. Raises `ebmesh.PolicyError`
    with every diagnostic if the policy is wrong. `progress`, if given, is
    called with each phase's name (PHASES) as it starts: a plain callable, so
    that whoever shows progress (the CLI, with rich) needs nothing from here.
    """
    # The one pause of the pipeline, parse to encode (gc_pause.py): a
    # 100,000-rule policy is millions of small acyclic objects, which the
    # cyclic collector would rescan several times and find nothing in.
    with cyclic_gc_paused():
        return _compile(policy, filename, progress or _no_progress)


def _no_progress(phase: str) -> None:
    pass


def _compile(
    policy: str | Path | PolicyFile, filename: str, progress: Callable[[str], None]
) -> CompiledPolicy:
    timings: dict[str, float] = {}
    started = time.perf_counter()
    upcoming = iter(PHASES)

    def phase(name: str) -> None:
        nonlocal started
        now = time.perf_counter()
        timings[name] = now - started
        started = now
        following = next(upcoming, None)
        if following is not None:
            progress(following)

    progress(next(upcoming))
    tree = parse_and_check(policy, filename=filename)
    phase("parse_and_check")
    ir = lower_to_ir(tree)
    phase("ir")
    shape, tables = lower(ir)
    phase("tables")
    header = render_policy_header(shape)
    main = (bpf_source_dir() / MAIN_SOURCE).read_text()
    with tempfile.TemporaryDirectory(prefix="ebmesh-gen-") as generated:
        (Path(generated) / GENERATED_HEADER).write_text(header)
        build = build_object(main, include_dirs=[Path(generated), bpf_source_dir()], name="ebmesh")
    phase("clang")
    image = DatapathImage.assemble(build.object, encode_tables(tables), shape, tables)
    phase("encode")
    return CompiledPolicy(
        tree=tree,
        policy=ir,
        shape=shape,
        tables=tables,
        sources={GENERATED_HEADER: header, MAIN_SOURCE: main},
        image=image,
        build=build,
        timings=timings,
    )
