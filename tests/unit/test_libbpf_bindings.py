"""The ctypes binding table against the installed libbpf.so.1 (no root needed)."""

from __future__ import annotations

import ast
import ctypes
import errno
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ebmesh.errors import EnvironmentProblem, LibbpfError
from ebmesh.loader import libbpf as binding

LOADER_DIR = Path(binding.__file__).parent
EBMESH_DIR = LOADER_DIR.parent
LIBBPF_NEWEST_ALLOWED = (1, 1, 0)  # Debian 12's libbpf; bind nothing newer


def _libbpf_path() -> str:
    """The file the dynamic loader picks for libbpf.so.1 (loading it if needed)."""
    binding.load()
    with open("/proc/self/maps") as maps:
        for line in maps:
            if "libbpf.so.1" in line:
                return line.split()[-1]
    pytest.fail("libbpf.so.1 is loaded but not in /proc/self/maps")


@pytest.fixture(scope="module")
def exported() -> dict[str, str]:
    """name -> version tag (e.g. LIBBPF_0.0.9) of every function libbpf.so.1 defines."""
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) is not installed")
    out = subprocess.run(
        [nm, "-D", "--defined-only", _libbpf_path()], check=True, capture_output=True, text=True
    ).stdout
    symbols = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "TtWi":
            name, _, version = parts[2].partition("@")
            symbols[name] = version.lstrip("@")
    assert symbols, "nm listed no functions"
    return symbols


def _version(tag: str) -> tuple[int, ...]:
    match = re.fullmatch(r"LIBBPF_(\d+)\.(\d+)\.(\d+)", tag)
    assert match, f"unexpected version tag {tag!r}"
    return tuple(int(x) for x in match.groups())


TABLE_NAMES = [entry[0] for entry in binding.LIBBPF_FUNCTIONS]


def test_table_has_no_duplicates():
    assert len(TABLE_NAMES) == len(set(TABLE_NAMES))
    libc_names = [entry[0] for entry in binding.LIBC_FUNCTIONS]
    assert len(libc_names) == len(set(libc_names))


@pytest.mark.parametrize("name", TABLE_NAMES)
def test_bound_function_is_exported_by_libbpf_1_1(name, exported):
    assert name in exported, f"{name} is not exported by the installed libbpf.so.1"
    assert _version(exported[name]) <= LIBBPF_NEWEST_ALLOWED, (
        f"{name} appeared in {exported[name]}: newer than libbpf 1.1"
    )


@pytest.mark.parametrize("table", ["libbpf", "libc"])
def test_every_bound_function_has_argtypes_restype_and_check(table):
    bindings, entries = (
        (binding.lib, binding.LIBBPF_FUNCTIONS)
        if table == "libbpf"
        else (binding.libc, binding.LIBC_FUNCTIONS)
    )
    for name, restype, argtypes, check in entries:
        func = getattr(bindings, name)
        assert func.__name__ == name
        assert func.argtypes is not None, f"{name}: argtypes not set"
        assert tuple(func.argtypes) == tuple(argtypes), f"{name}: argtypes differ from the table"
        assert func.restype is restype, f"{name}: restype differs from the table"
        assert check in (binding.NEG_ERRNO, binding.NULL_ERRNO, binding.UNCHECKED)
        if check == binding.UNCHECKED:
            assert func.errcheck is None, f"{name}: unexpected errcheck"
        else:
            assert func.errcheck is binding._CHECKS[check], f"{name}: no errcheck"
        if check == binding.NULL_ERRNO:
            assert restype is not None and issubclass(
                restype, (ctypes._Pointer, ctypes.c_void_p)
            ), name
        if check == binding.NEG_ERRNO:
            # int, or __s64 for btf__resolve_size
            assert restype in (ctypes.c_int, ctypes.c_int64), (
                f"{name}: negative-errno check on a result that is not a signed integer"
            )


def test_names_outside_the_table_are_not_reachable():
    for name in ("bpf_prog_load", "bpf_object__open", "bpf_map_lookup_and_delete_elem", "_private"):
        with pytest.raises(AttributeError):
            getattr(binding.lib, name)
    with pytest.raises(AttributeError):
        binding.libc.system  # noqa: B018


def _loader_sources() -> dict[Path, ast.Module]:
    return {
        path: ast.parse(path.read_text(), str(path)) for path in sorted(LOADER_DIR.glob("*.py"))
    }


def test_loader_calls_only_functions_in_the_table():
    allowed = {"lib": set(TABLE_NAMES), "libc": {entry[0] for entry in binding.LIBC_FUNCTIONS}}
    used: set[str] = set()
    for path, tree in _loader_sources().items():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in allowed
                and not node.attr.startswith("_")
            ):
                assert node.attr in allowed[node.value.id], (
                    f"{path.name}:{node.lineno} uses {node.value.id}.{node.attr}, which is not in the table"
                )
                used.add(node.attr)
    # Functions called via `self.__dict__[...]` during loading.
    used.add("libbpf_set_print")
    unused = set(TABLE_NAMES) - used
    assert not unused, f"bound but never called (drop them from the table): {sorted(unused)}"


LIBRARY_OPENERS = {"CDLL", "cdll", "PyDLL", "pydll", "LoadLibrary", "find_library", "dlopen"}


def test_only_libbpf_py_opens_shared_libraries():
    """No other module loads a library or calls ctypes functions past the table."""
    for path in sorted(EBMESH_DIR.rglob("*.py")):
        if path == Path(binding.__file__):
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", None)
            assert name not in LIBRARY_OPENERS, f"{path}:{node.lineno} uses {name}"
            if isinstance(node, ast.ImportFrom) and path.parent != LOADER_DIR:
                module = node.module or ""
                imported = {alias.name for alias in node.names}
                assert not module.endswith("loader.libbpf") and not (
                    module.endswith("loader") and "libbpf" in imported
                ), (
                    f"{path}:{node.lineno} reaches into ebmesh.loader.libbpf; use the ebmesh.loader API"
                )


# Layouts from the C headers (offsetof/sizeof compiled against libbpf 1.1 and uapi 6.1).
STRUCT_LAYOUTS = {
    binding.BpfObjectOpenOpts: (80, {"object_name": 8, "kconfig": 40, "kernel_log_level": 72}),
    binding.BpfTestRunOpts: (80, {"ctx_in": 32, "ctx_size_in": 48, "retval": 56, "batch_size": 76}),
    binding.BpfMapBatchOpts: (24, {"elem_flags": 8, "flags": 16}),
    binding.BpfProgInfo: (
        232,
        {
            "load_time": 40,
            "name": 64,
            "netns_dev": 88,
            "prog_tags": 184,
            "run_time_ns": 192,
            "run_cnt": 200,
            "verified_insns": 216,
            "attach_btf_id": 224,
        },
    ),
    binding.BpfMapInfo: (88, {"name": 24, "netns_dev": 48, "map_extra": 80}),
    binding.BtfTypeRecord: (12, {"info": 4, "size_or_type": 8}),
    binding.BtfArrayRecord: (12, {"index_type": 4, "nelems": 8}),
    binding.BtfMemberRecord: (12, {"type": 4, "offset": 8}),
    binding.BtfParamRecord: (8, {"type": 4}),
    binding.BtfVarRecord: (4, {"linkage": 0}),
    binding.BtfVarSecinfoRecord: (12, {"offset": 4, "size": 8}),
}


@pytest.mark.parametrize("struct", list(STRUCT_LAYOUTS), ids=lambda s: s.__name__)
def test_struct_layout_matches_c(struct):
    size, offsets = STRUCT_LAYOUTS[struct]
    assert ctypes.sizeof(struct) == size
    for field, offset in offsets.items():
        assert getattr(struct, field).offset == offset, field


def test_failure_carries_errno_and_libbpf_log():
    """A NULL-returning call: errno is libbpf's, the log is libbpf's formatted message."""
    data = b"\x7fELF but not really an object" * 4
    buf = ctypes.create_string_buffer(data, len(data))
    opts = binding.BpfObjectOpenOpts(
        sz=ctypes.sizeof(binding.BpfObjectOpenOpts), object_name=b"not_elf"
    )
    with pytest.raises(LibbpfError) as info:
        binding.lib.bpf_object__open_mem(buf, len(data), ctypes.byref(opts))
    err = info.value
    assert err.function == "bpf_object__open_mem"
    assert err.errno == 4001  # LIBBPF_ERRNO__FORMAT
    assert "BPF object format invalid" in err.detail
    # "%s" in libbpf's format was filled in by vsnprintf:
    assert "libbpf: elf: 'not_elf' is not a proper ELF object" in err.log
    assert "BPF object format invalid" in str(err)


def test_negative_return_becomes_errno():
    with pytest.raises(LibbpfError) as info:
        binding.lib.bpf_map_lookup_elem(-1, None, None)
    assert info.value.errno == errno.EBADF
    assert info.value.function == "bpf_map_lookup_elem"


def test_log_of_a_successful_call_is_not_attached_to_the_next_failure():
    with pytest.raises(LibbpfError):
        binding.lib.bpf_object__open_mem(b"junk" * 8, 32, None)
    with pytest.raises(LibbpfError) as info:
        binding.lib.bpf_map_lookup_elem(-1, None, None)
    assert info.value.log == ""


def test_num_possible_cpus_is_sane():
    assert binding.lib.libbpf_num_possible_cpus() >= 1


def test_missing_library_is_an_environment_problem():
    bindings = binding._Bindings(
        "libebmesh-does-not-exist.so.1", binding.LIBBPF_FUNCTIONS, "Install it."
    )
    with pytest.raises(
        EnvironmentProblem, match="cannot load libebmesh-does-not-exist.so.1.*Install it"
    ):
        bindings.bpf_object__load  # noqa: B018


def test_missing_function_is_an_environment_problem():
    table = [
        ("bpf_object__load", ctypes.c_int, [binding.BpfObjectPtr], binding.NEG_ERRNO),
        ("bpf_from_the_future", ctypes.c_int, [], binding.NEG_ERRNO),
    ]
    bindings = binding._Bindings(binding.LIBBPF_SONAME, table, "Upgrade.")
    with pytest.raises(EnvironmentProblem, match="lacks bpf_from_the_future"):
        bindings.bpf_object__load  # noqa: B018


def test_libbpf_version_is_the_loaded_librarys():
    """`ebmesh version`'s libbpf: what the library says of itself agrees with its file
    name (libbpf.so.1.1.2 on Debian 12)."""
    major, minor = binding.libbpf_version()
    real = Path(_libbpf_path()).resolve().name
    match = re.fullmatch(r"libbpf\.so\.(\d+)\.(\d+)(?:\.\d+)?", real)
    assert match, real
    assert (major, minor) == (int(match.group(1)), int(match.group(2)))
