"""The package's layers depend only downward, and every module is there for its users.

    language -> ir -> codegen -> toolchain        (the compile side)
    runtime -> loader                            (the run side)
    mtls                                         (the run side's identities; no kernel)
    datapath, errors, resources                  (plain data and helpers under both)

The top-level modules (compiler, policy, live, cli) sequence the layers and
may use any of them. Checked two ways: statically, from every import
statement of every module (those inside functions too), and by importing the
compile side in a fresh interpreter and compiling a policy there.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "ebmesh"

BOTTOM = {"ebmesh.errors", "ebmesh.datapath", "ebmesh.resources"}
MAY_IMPORT = {
    "ebmesh.datapath": {"ebmesh.errors"},
    "ebmesh.language": BOTTOM | {"ebmesh.ir"},
    "ebmesh.ir": BOTTOM,
    "ebmesh.codegen": BOTTOM,
    "ebmesh.toolchain": BOTTOM,
    "ebmesh.loader": {"ebmesh.errors"},
    "ebmesh.runtime": BOTTOM | {"ebmesh.loader", "ebmesh.mtls"},
    "ebmesh.mtls": {"ebmesh.errors", "ebmesh.datapath"},
}
ENTRY_POINTS = {"ebmesh", "ebmesh.__main__", "ebmesh.cli"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every ebmesh module `path` imports, wherever the import statement is."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {m for m in found if m in modules}


def layer_of(module: str) -> str | None:
    for layer in MAY_IMPORT:
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def test_every_layer_imports_only_what_lies_below_it():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        layer = layer_of(module)
        if layer is None:
            continue  # a top-level module: it sequences the layers
        for imported in imports_of(path):
            target = layer_of(imported) or imported
            if target != layer and not any(
                target == allowed or target.startswith(allowed + ".")
                for allowed in MAY_IMPORT[layer]
            ):
                wrong.append(f"{module} imports {imported}")
    assert wrong == []


def test_the_layer_check_sees_a_wrong_import(tmp_path):
    """Not vacuous: an import of the loader from the IR is caught."""
    wrong = PACKAGE / "ir" / "_layer_probe.py"
    wrong.write_text("from ebmesh.loader import BpfObject\n")
    try:
        assert "ebmesh.loader" in imports_of(wrong)
        assert layer_of("ebmesh.ir._layer_probe") == "ebmesh.ir"
        assert "ebmesh.loader" not in MAY_IMPORT["ebmesh.ir"]
    finally:
        wrong.unlink()


def test_every_module_is_used_by_the_package():
    """No module of the installed package exists only for the tests: each is reachable
    from the public entry points (`import ebmesh` with its lazy attributes, the CLI)."""
    graph = {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}
    reached, pending = set(), list(ENTRY_POINTS)
    while pending:
        module = pending.pop()
        if module in reached:
            continue
        reached.add(module)
        pending += graph.get(module, ())
        # importing a.b.c runs a/__init__ and a/b/__init__ first
        parts = module.split(".")
        pending += [".".join(parts[:i]) for i in range(1, len(parts))]
    assert sorted(set(graph) - reached) == []


COMPILE_SIDE = """
import sys
import ebmesh.language, ebmesh.ir.lowering
import ebmesh.codegen.header, ebmesh.codegen.map_contents
import ebmesh.toolchain.clang, ebmesh.datapath.image
import ebmesh
compiled = ebmesh.compile('mesh t { workload a { cgroup "a" } allow a -> any port 80 }')
assert compiled.object_bytes.startswith(b"\\x7fELF")
print(sorted(m for m in sys.modules if m.startswith(("ebmesh.loader", "ebmesh.runtime"))))
"""


def test_compiling_loads_no_libbpf_code():
    done = subprocess.run(
        [sys.executable, "-c", COMPILE_SIDE], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
