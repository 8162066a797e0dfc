"""ebmesh.loader against the real kernel and the system libbpf (root; no mocks).

The BPF C sources are in tests/kernel/data/ and are compiled here with
clang against a vmlinux.h that bpftool dumps once per session.

SAFETY: every process on the machine sits in the root cgroup. Programs are
only ever attached to throwaway cgroups this module creates, named
/sys/fs/cgroup/unified/ebmesh-test-<random>, and removed afterwards;
`_assert_throwaway` guards every attach. Test traffic stays on loopback.
"""

from __future__ import annotations

import errno
import gc
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ebmesh.errors import LibbpfError
from ebmesh.loader import (
    BPF_NOEXIST,
    AttachType,
    BpfLink,
    BpfObject,
    MapHandle,
    MapType,
    ProgType,
    RingBuffer,
    bpffs_mounted,
    enable_run_time_stats,
    ensure_bpffs,
    possible_cpus,
    program_info,
    query_cgroup,
)
from ebmesh.runtime.cgroups import cgroup2_mount
from tests.support import places

pytestmark = pytest.mark.kernel

DATA = Path(__file__).parent / "data"
CGROUP2_ROOT = cgroup2_mount()
CGROUP_PREFIX = places.TEST_PREFIX

# Cgroups this module created and has not removed yet: the only legal attach targets.
_created_cgroups: set[Path] = set()


# --- environment and compilation ----------------------------------------------


@pytest.fixture(scope="session")
def kernel_env():
    if os.geteuid() != 0:
        pytest.fail("kernel tests need root (run `make test` as root)")
    for tool in ("clang", "bpftool"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (make setup)")
    if not Path("/sys/kernel/btf/vmlinux").exists():
        pytest.fail("the kernel has no BTF (/sys/kernel/btf/vmlinux)")


@pytest.fixture(scope="session")
def vmlinux_dir(kernel_env, tmp_path_factory) -> Path:
    """A directory holding vmlinux.h of the running kernel (dumped once per session)."""
    out = tmp_path_factory.mktemp("vmlinux")
    with open(out / "vmlinux.h", "w") as header:
        subprocess.run(
            ["bpftool", "btf", "dump", "file", "/sys/kernel/btf/vmlinux", "format", "c"],
            stdout=header,
            check=True,
        )
    return out


@pytest.fixture(scope="session")
def bpf_elf(vmlinux_dir, tmp_path_factory):
    """compile(name) -> ELF bytes of tests/kernel/data/<name>.bpf.c (compiled once)."""
    out = tmp_path_factory.mktemp("bpf")
    cache: dict[str, bytes] = {}

    def compile_bpf(name: str) -> bytes:
        if name not in cache:
            obj = out / f"{name}.bpf.o"
            result = subprocess.run(
                [
                    "clang",
                    "-target",
                    "bpf",
                    "-g",
                    "-O2",
                    f"-I{vmlinux_dir}",
                    "-c",
                    str(DATA / f"{name}.bpf.c"),
                    "-o",
                    str(obj),
                ],
                capture_output=True,
                text=True,
            )
            assert result.returncode == 0, f"clang failed on {name}.bpf.c:\n{result.stderr}"
            cache[name] = obj.read_bytes()
        return cache[name]

    return compile_bpf


@pytest.fixture
def open_object(bpf_elf):
    """open_object(name) -> BpfObject, closed after the test."""
    objects: list[BpfObject] = []

    def _open(name: str) -> BpfObject:
        obj = BpfObject.open(bpf_elf(name), f"{name}_test")
        objects.append(obj)
        return obj

    try:
        yield _open
    finally:
        for obj in objects:
            obj.close()


# --- cgroups and loopback traffic -------------------------------------------------


def _assert_throwaway(path: Path) -> None:
    """Refuse any attach target but a cgroup this module made under CGROUP2_ROOT."""
    assert path.parent == CGROUP2_ROOT, path
    assert path.name.startswith(CGROUP_PREFIX), path
    assert path in _created_cgroups, path
    assert path.is_dir() and path != CGROUP2_ROOT


@pytest.fixture
def throwaway_cgroup(kernel_env) -> Path:
    """A fresh, empty cgroup v2 directory; emptied and removed afterwards, whatever happens."""
    with places.throwaway_cgroup() as path:
        _created_cgroups.add(path)
        try:
            yield path
        finally:
            _created_cgroups.discard(path)


@pytest.fixture
def listener():
    """A TCP socket listening on 127.0.0.1; yields its port."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield server.getsockname()[1]
    finally:
        server.close()


_CHILD = r"""
import errno, os, socket, sys, time
procs, port = sys.argv[1], int(sys.argv[2])
with open(procs, "w") as f:
    f.write(str(os.getpid()))
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(10)
start = time.monotonic()
try:
    s.connect(("127.0.0.1", port))
    result = "connected"
except OSError as e:
    result = errno.errorcode.get(e.errno, str(e.errno))
print(result, time.monotonic() - start)
"""


def connect_from(cgroup: Path, port: int) -> tuple[str, float]:
    """Connect to 127.0.0.1:port from a child process inside `cgroup`: (result, seconds)."""
    _assert_throwaway(cgroup)
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(cgroup / "cgroup.procs"), str(port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    result, seconds = out.stdout.split()
    return result, float(seconds)


def connect_here(port: int) -> str:
    """Connect from this process (root cgroup): must never be affected by the tests."""
    with socket.create_connection(("127.0.0.1", port), timeout=10):
        return "connected"


# --- object lifecycle ------------------------------------------------------------------


def test_open_inspect_load_close(open_object):
    obj = open_object("maps")
    assert not obj.loaded and not obj.closed
    assert set(obj.maps) == {
        "hash_map",
        "array_map",
        "percpu_array",
        "percpu_hash",
        "lpm_map",
        "lru_map",
        "prog_array",
    }
    hash_map = obj.maps["hash_map"]
    assert (hash_map.type, hash_map.key_size, hash_map.value_size, hash_map.max_entries) == (
        MapType.HASH,
        4,
        8,
        64,
    )
    assert obj.maps["lpm_map"].type == MapType.LPM_TRIE
    prog = obj.programs["count_run"]
    assert (prog.section, prog.type) == ("syscall", ProgType.SYSCALL)
    assert prog.insn_count > 0 and prog.autoload
    with pytest.raises(LibbpfError) as not_loaded:
        hash_map.fd  # noqa: B018
    assert not_loaded.value.errno == errno.EBADF

    hash_map.set_max_entries(128)
    obj.load()
    assert obj.loaded
    assert hash_map.fd > 0 and prog.fd > 0
    assert hash_map.max_entries == 128
    assert program_info(prog.id).name == "count_run"
    with pytest.raises(LibbpfError) as too_late:
        hash_map.set_max_entries(256)
    assert too_late.value.errno == errno.EBUSY

    obj.close()
    obj.close()  # idempotent
    assert obj.closed
    with pytest.raises(ValueError):
        hash_map.lookup(b"\0" * 4)
    with pytest.raises(ValueError):
        prog.fd  # noqa: B018


def test_context_manager_closes(bpf_elf):
    with BpfObject.open(bpf_elf("maps"), "ctx_mgr") as obj:
        obj.load()
        fd = obj.maps["array_map"].fd
        os.fstat(fd)
    assert obj.closed
    with pytest.raises(OSError):
        os.fstat(fd)


def test_verifier_rejection_carries_the_verifier_log(open_object):
    obj = open_object("reject")
    with pytest.raises(LibbpfError) as info:
        obj.load()
    err = info.value
    assert err.function == "bpf_object__load"
    assert err.errno in (errno.EACCES, errno.EINVAL)
    assert "unchecked_lookup" in err.detail
    assert "BEGIN PROG LOAD LOG" in err.log
    assert "invalid mem access 'map_value_or_null'" in err.log
    assert "invalid mem access" in str(err)


# --- maps ----------------------------------------------------------------------------


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


def u64(n: int) -> bytes:
    return struct.pack("<Q", n)


@pytest.fixture
def maps(open_object):
    obj = open_object("maps")
    obj.load()
    return obj


def test_hash_update_lookup_delete_keys(maps):
    m = maps.maps["hash_map"]
    assert m.lookup(u32(1)) is None
    m.update(u32(1), u64(100))
    m.update(u32(2), u64(200))
    assert m.lookup(u32(1)) == u64(100)
    with pytest.raises(LibbpfError) as exists:
        m.update(u32(1), u64(5), BPF_NOEXIST)
    assert exists.value.errno == errno.EEXIST
    assert "hash_map" in exists.value.detail
    assert set(m.keys()) == {u32(1), u32(2)}
    assert dict(m.items()) == {u32(1): u64(100), u32(2): u64(200)}
    assert m.delete(u32(1)) is True
    assert m.delete(u32(1)) is False
    assert list(m.keys()) == [u32(2)]
    with pytest.raises(ValueError):
        m.lookup(b"\0" * 3)
    with pytest.raises(ValueError):
        m.update(u32(3), u32(3))


def test_array_keys_are_every_index(maps):
    m = maps.maps["array_map"]
    assert list(m.keys()) == [u32(i) for i in range(8)]
    m.update(u32(7), u64(77))
    assert m.lookup(u32(7)) == u64(77)
    assert m.lookup(u32(8)) is None


def test_update_batch_on_hash(maps):
    m = maps.maps["hash_map"]
    keys = b"".join(u32(i) for i in range(10))
    values = b"".join(u64(i * i) for i in range(10))
    assert m.update_batch(keys, values, 10) == 10
    assert {k: v for k, v in m.items()} == {u32(i): u64(i * i) for i in range(10)}
    assert m._batch_unsupported == set()  # hash maps batch natively
    with pytest.raises(ValueError):
        m.update_batch(keys, values[:-1], 10)


def test_update_batch_on_lpm_trie(maps):
    m = maps.maps["lpm_map"]

    def key(prefixlen: int, addr: str) -> bytes:
        return u32(prefixlen) + socket.inet_aton(addr)

    keys = key(8, "10.0.0.0") + key(16, "10.1.0.0") + key(24, "10.1.2.0")
    assert m.update_batch(keys, u32(8) + u32(16) + u32(24), 3) == 3
    # Longest-prefix match on lookup:
    assert m.lookup(key(32, "10.1.2.3")) == u32(24)
    assert m.lookup(key(32, "10.1.9.9")) == u32(16)
    assert m.lookup(key(32, "10.9.9.9")) == u32(8)
    assert m.lookup(key(32, "11.0.0.1")) is None
    # Native batch on newer kernels; element by element where the kernel lacks it.
    assert m._batch_unsupported in (set(), {"update"})


def test_update_batch_falls_back_when_the_kernel_has_no_batch_op(maps):
    m = maps.maps["prog_array"]
    prog = maps.programs["count_run"]
    assert m.update_batch(u32(0) + u32(1), u32(prog.fd) * 2, 2) == 2
    assert m._batch_unsupported == {"update"}  # ENOTSUPP from the kernel, then per element
    # A program array's lookup from user space answers the program id.
    assert m.lookup(u32(0)) == u32(prog.id)
    assert m.lookup(u32(1)) == u32(prog.id)


def test_percpu_lookup_update_and_batch(maps):
    ncpus = possible_cpus()
    arr = maps.maps["percpu_array"]
    assert arr.is_percpu and arr.value_size == 4 and arr.percpu_stride == 8
    arr.update_percpu(u32(1), [u32(10 + cpu) for cpu in range(ncpus)])
    assert arr.lookup_percpu(u32(1)) == [u32(10 + cpu) for cpu in range(ncpus)]
    with pytest.raises(ValueError):
        arr.lookup(u32(1))
    with pytest.raises(ValueError):
        arr.update_percpu(u32(1), [u32(0)] * (ncpus + 1))

    # The program bumps slot 0 on the CPU it ran on.
    before = sum(struct.unpack("<I", v)[0] for v in arr.lookup_percpu(u32(0)))
    assert maps.programs["count_run"].test_run() == 0
    after = sum(struct.unpack("<I", v)[0] for v in arr.lookup_percpu(u32(0)))
    assert after == before + 1

    ph = maps.maps["percpu_hash"]
    values = b"".join(
        ph.pack_percpu([u64(k * 100 + cpu) for cpu in range(ncpus)]) for k in range(3)
    )
    assert ph.update_batch(u32(0) + u32(1) + u32(2), values, 3) == 3
    assert ph.lookup_percpu(u32(2)) == [u64(200 + cpu) for cpu in range(ncpus)]
    assert ph.lookup_percpu(u32(9)) is None
    assert dict(ph.items())[u32(1)] == [u64(100 + cpu) for cpu in range(ncpus)]


# --- syscall programs, ring buffer, stats -------------------------------------------------

ARGS = struct.Struct("<IIQ")  # struct args {u32 in; u32 out; u64 seq;}
EVENT = struct.Struct("<IIQ")  # struct event {u32 value; u32 magic; u64 seq;}


@pytest.fixture
def syscall_obj(open_object):
    obj = open_object("syscall")
    rodata = obj.maps[".rodata"]
    assert rodata.is_internal
    rodata.set_initial_value(struct.pack("<II", 3, 0xEB))
    obj.programs["unused"].set_autoload(False)
    obj.load()
    return obj


def test_syscall_program_writes_its_context(syscall_obj):
    prog = syscall_obj.programs["compute"]
    ctx = bytearray(ARGS.pack(14, 0, 1))
    assert prog.test_run(ctx) == 0
    assert ARGS.unpack(ctx) == (14, 42, 1)  # out = in * cfg_multiplier (3, from .rodata)
    assert syscall_obj.maps["runs"].lookup(u32(0)) == u64(1)
    with pytest.raises(LibbpfError) as not_loaded:
        syscall_obj.programs["unused"].fd  # noqa: B018
    assert not_loaded.value.errno == errno.EBADF
    with pytest.raises(TypeError):
        prog.test_run(bytes(ARGS.size))


def test_ring_buffer_receives_what_the_program_submitted(syscall_obj):
    prog = syscall_obj.programs["compute"]
    received: list[bytes] = []
    with RingBuffer(syscall_obj.maps["events"], received.append) as ring:
        assert ring.consume() == 0
        assert ring.poll(0) == 0
        for seq in (1, 2, 3):
            prog.test_run(bytearray(ARGS.pack(seq, 0, seq)))
        assert ring.epoll_fd >= 0
        total = 0
        deadline = time.monotonic() + 5
        while total < 3 and time.monotonic() < deadline:
            total += ring.poll(500)
    assert [EVENT.unpack(r) for r in received] == [(3 * s, 0xEB, s) for s in (1, 2, 3)]


def test_ring_buffer_callback_exception_propagates(syscall_obj):
    prog = syscall_obj.programs["compute"]

    def explode(record: bytes) -> None:
        raise RuntimeError(f"callback saw {len(record)} bytes")

    ring = RingBuffer(syscall_obj.maps["events"], explode)
    try:
        prog.test_run(bytearray(ARGS.pack(1, 0, 1)))
        with pytest.raises(RuntimeError, match="callback saw 16 bytes"):
            ring.poll(1000)
    finally:
        ring.close()
    ring.close()  # idempotent
    with pytest.raises(ValueError):
        ring.poll(0)


def test_run_time_stats_count_runs(syscall_obj):
    prog = syscall_obj.programs["compute"]
    with enable_run_time_stats():
        before = prog.stats()
        for i in range(5):
            prog.test_run(bytearray(ARGS.pack(i, 0, i)))
        after = prog.stats()
    assert after.run_cnt - before.run_cnt == 5
    assert after.run_time_ns > before.run_time_ns
    info = prog.info()
    assert info.name == "compute" and info.type == ProgType.SYSCALL and len(info.tag) == 16


# --- cgroup attach ---------------------------------------------------------------------


@pytest.fixture
def deny_connect4(open_object):
    obj = open_object("connect4")
    obj.load()
    prog = obj.programs["deny_connect4"]
    assert prog.type == ProgType.CGROUP_SOCK_ADDR
    assert prog.expected_attach_type == AttachType.CGROUP_INET4_CONNECT
    return prog


def test_cgroup_connect4_deny_then_detach(deny_connect4, throwaway_cgroup, listener):
    cgroup, port = throwaway_cgroup, listener
    assert connect_from(cgroup, port)[0] == "connected"
    assert query_cgroup(cgroup, AttachType.CGROUP_INET4_CONNECT) == []

    _assert_throwaway(cgroup)
    link = deny_connect4.attach_cgroup(cgroup)
    try:
        assert query_cgroup(cgroup, AttachType.CGROUP_INET4_CONNECT) == [deny_connect4.id]
        result, seconds = connect_from(cgroup, port)
        assert result == "EPERM"
        assert seconds < 2, "EPERM must be immediate, not a timeout"
        assert connect_here(port) == "connected"  # the root cgroup is untouched
        assert query_cgroup(cgroup, AttachType.CGROUP_INET4_CONNECT, effective=True) == [
            deny_connect4.id
        ]
    finally:
        link.close()
    assert link.closed
    link.close()  # idempotent

    assert connect_from(cgroup, port)[0] == "connected"
    assert query_cgroup(cgroup, AttachType.CGROUP_INET4_CONNECT) == []


def test_link_attach_by_fd_and_context_manager(deny_connect4, throwaway_cgroup, listener):
    _assert_throwaway(throwaway_cgroup)
    fd = os.open(throwaway_cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with deny_connect4.attach_cgroup(fd) as link:
            assert link.fd >= 0
            assert connect_from(throwaway_cgroup, listener)[0] == "EPERM"
        assert query_cgroup(fd, AttachType.CGROUP_INET4_CONNECT) == []
    finally:
        os.close(fd)
    assert connect_from(throwaway_cgroup, listener)[0] == "connected"


def test_garbage_collected_link_detaches(deny_connect4, throwaway_cgroup):
    _assert_throwaway(throwaway_cgroup)
    link = deny_connect4.attach_cgroup(throwaway_cgroup)
    assert query_cgroup(throwaway_cgroup, AttachType.CGROUP_INET4_CONNECT) == [deny_connect4.id]
    del link
    gc.collect()
    assert query_cgroup(throwaway_cgroup, AttachType.CGROUP_INET4_CONNECT) == []


@pytest.fixture
def pin_dir(kernel_env):
    root = ensure_bpffs()
    path = root / f"{CGROUP_PREFIX}{secrets.token_hex(6)}"
    path.mkdir()
    try:
        yield path
    finally:
        for leftover in path.iterdir():
            leftover.unlink()
        path.rmdir()


def test_pinned_link_outlives_its_handle(deny_connect4, throwaway_cgroup, listener, pin_dir):
    cgroup, pin = throwaway_cgroup, pin_dir / "deny_connect4"
    _assert_throwaway(cgroup)
    link = deny_connect4.attach_cgroup(cgroup)
    try:
        link.pin(pin)
        assert link.pin_path == str(pin)
    finally:
        link.close()  # the pin keeps it attached
    assert query_cgroup(cgroup, AttachType.CGROUP_INET4_CONNECT) == [deny_connect4.id]
    assert connect_from(cgroup, port=listener)[0] == "EPERM"

    reopened = BpfLink.open_pinned(pin)
    try:
        reopened.unpin()
        assert not pin.exists()
    finally:
        reopened.detach()  # detaches even though a pin existed a moment ago
    assert reopened.closed
    assert query_cgroup(cgroup, AttachType.CGROUP_INET4_CONNECT) == []
    assert connect_from(cgroup, port=listener)[0] == "connected"


def test_link_outlives_its_object(bpf_elf, throwaway_cgroup, listener):
    obj = BpfObject.open(bpf_elf("connect4"), "outlive")
    try:
        obj.load()
        _assert_throwaway(throwaway_cgroup)
        link = obj.programs["deny_connect4"].attach_cgroup(throwaway_cgroup)
    finally:
        obj.close()
    try:
        assert len(query_cgroup(throwaway_cgroup, AttachType.CGROUP_INET4_CONNECT)) == 1
        assert connect_from(throwaway_cgroup, listener)[0] == "EPERM"
    finally:
        link.close()
    assert query_cgroup(throwaway_cgroup, AttachType.CGROUP_INET4_CONNECT) == []


def test_attach_to_missing_cgroup_is_an_oserror(deny_connect4):
    with pytest.raises(FileNotFoundError):
        deny_connect4.attach_cgroup(CGROUP2_ROOT / f"{CGROUP_PREFIX}does-not-exist")


def test_pinned_map_reopens_standalone(maps, pin_dir):
    m = maps.maps["hash_map"]
    m.update(u32(5), u64(55))
    pin = pin_dir / "hash_map"
    m.pin(pin)
    try:
        with MapHandle.from_pinned(pin) as again:
            assert (again.name, again.type, again.key_size, again.value_size) == (
                "hash_map",
                MapType.HASH,
                4,
                8,
            )
            assert again.lookup(u32(5)) == u64(55)
            again.update(u32(6), u64(66))
        assert m.lookup(u32(6)) == u64(66)
        with pytest.raises(ValueError):
            again.lookup(u32(5))
    finally:
        m.unpin(pin)
    assert not pin.exists()


# --- bpffs -------------------------------------------------------------------------------


def test_ensure_bpffs_is_idempotent(kernel_env, tmp_path):
    assert ensure_bpffs() == Path("/sys/fs/bpf")
    assert bpffs_mounted("/sys/fs/bpf")
    target = tmp_path / "bpffs"
    try:
        assert ensure_bpffs(target) == target
        assert bpffs_mounted(target)
        assert ensure_bpffs(target) == target  # already mounted: nothing to do
    finally:
        if bpffs_mounted(target):
            subprocess.run(["umount", str(target)], check=True)
    assert not bpffs_mounted(target)
