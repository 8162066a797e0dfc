"""ebmesh.toolchain: building eBPF objects with clang, the cache, vmlinux.h.

These tests run the real clang and bpftool (installed by `make setup`) and
read the running kernel's BTF; nothing is loaded into the kernel. Reading
objects back is ebmesh.loader.inspect's job (test_inspect.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ebmesh.errors import EnvironmentProblem, ToolchainError
from ebmesh.toolchain import cache, object_cache
from ebmesh.toolchain.clang import build_object
from ebmesh.toolchain.object_cache import ObjectCache
from ebmesh.toolchain.vmlinux import vmlinux_header

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data" / "toolchain"
SAMPLE_SOURCE = (DATA / "sample.bpf.c").read_text()
SAMPLE_INCLUDE = DATA / "include"


@pytest.fixture(scope="module", autouse=True)
def module_cache(tmp_path_factory):
    """One cache for the module, so vmlinux.h and the sample are built once."""
    with pytest.MonkeyPatch.context() as patch:
        path = tmp_path_factory.mktemp("ebmesh-cache")
        patch.setenv("EBMESH_CACHE_DIR", str(path))
        for variable in ("EBMESH_CLANG", "EBMESH_BPFTOOL"):
            patch.delenv(variable, raising=False)
        yield path


@pytest.fixture(scope="module")
def sample(module_cache):
    return build_object(SAMPLE_SOURCE, include_dirs=[SAMPLE_INCLUDE], name="sample")


# -- the cache ------------------------------------------------------------------------


def test_second_build_is_a_cache_hit_with_identical_bytes(sample):
    again = build_object(SAMPLE_SOURCE, include_dirs=[SAMPLE_INCLUDE], name="sample")
    assert again.cache_hit and not sample.cache_hit
    assert again.object == sample.object and again.key == sample.key
    assert again.path.read_bytes() == sample.object
    assert again.seconds < sample.seconds


def test_rebuilds_are_byte_identical(sample, tmp_path, monkeypatch):
    monkeypatch.setenv("EBMESH_CACHE_DIR", str(tmp_path / "elsewhere"))
    fresh = build_object(SAMPLE_SOURCE, include_dirs=[SAMPLE_INCLUDE], name="sample")
    assert not fresh.cache_hit
    assert fresh.object == sample.object and fresh.key == sample.key


def test_changing_a_header_misses_the_cache(module_cache, tmp_path):
    include = tmp_path / "include"
    shutil.copytree(SAMPLE_INCLUDE, include)
    first = build_object(SAMPLE_SOURCE, include_dirs=[include], name="sample")
    header = include / "sample_policy.h"
    header.write_text(
        header.read_text().replace("#define VERDICT_ALLOW 1", "#define VERDICT_ALLOW 1\n")
    )
    changed = build_object(SAMPLE_SOURCE, include_dirs=[include], name="sample")
    assert not changed.cache_hit and changed.key != first.key
    (include / "unused.h").write_text("/* not included, still part of the key */\n")
    added = build_object(SAMPLE_SOURCE, include_dirs=[include], name="sample")
    assert not added.cache_hit and added.key != changed.key
    assert build_object(SAMPLE_SOURCE, include_dirs=[include], name="sample").cache_hit


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("EBMESH_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("EBMESH_CACHE_DIR")
    assert cache.cache_dir() == tmp_path / "xdg" / "ebmesh"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # invalid per the XDG spec
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "ebmesh"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "ebmesh"


def test_atomic_writes_race_safely(tmp_path):
    target = tmp_path / "entry"
    payloads = [bytes([n]) * 100_000 for n in range(8)]
    threads = [threading.Thread(target=cache.write_atomically, args=(target, p)) for p in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert target.read_bytes() in payloads
    assert os.listdir(tmp_path) == ["entry"]  # no temporary files left behind


# -- the cache's bound -----------------------------------------------------------------


def blob(fill: int, size: int = 1000) -> bytes:
    """Something the object cache takes for an object: ELF's magic, then `size` bytes."""
    return b"\x7fELF" + bytes([fill]) * size


def test_the_least_recently_used_entries_go_first(tmp_path):
    objects = ObjectCache(tmp_path, limit=2 * len(blob(0)))
    for key in ("a", "b"):
        objects.put(key, blob(ord(key)))
        time.sleep(0.05)  # file times tick in jiffies: keep the order unambiguous
    assert objects.get("a") == blob(ord("a"))  # a hit: now used more recently than b
    time.sleep(0.05)
    objects.put("c", blob(ord("c")))
    assert objects.get("b") is None
    assert objects.get("a") == blob(ord("a")) and objects.get("c") == blob(ord("c"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "a.o", "c.o"]


def test_an_entry_larger_than_the_cap_is_not_kept_and_a_cap_of_0_keeps_nothing(tmp_path):
    objects = ObjectCache(tmp_path, limit=100)
    objects.put("big", blob(1, 1000))
    assert objects.get("big") is None
    objects.put("small", blob(2, 10))
    assert objects.get("small") == blob(2, 10)
    ObjectCache(tmp_path, limit=0).put("other", blob(3, 10))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]


def test_eviction_removes_the_temporary_files_of_dead_writers_only(tmp_path):
    objects = ObjectCache(tmp_path, limit=10**6)
    stale, live = tmp_path / ".x.o.dead.tmp", tmp_path / ".y.o.live.tmp"
    for path in stale, live:
        path.write_bytes(b"half an object")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    objects.put("k", blob(1))
    assert not stale.exists() and live.exists()


@pytest.mark.parametrize("value", ["64M", "-1", "lots", "1.5"])
def test_a_cap_that_is_not_a_size_is_an_environment_problem(monkeypatch, value):
    monkeypatch.setenv("EBMESH_CACHE_MAX_BYTES", value)
    with pytest.raises(EnvironmentProblem, match=f"EBMESH_CACHE_MAX_BYTES='{re.escape(value)}'"):
        build_object(SAMPLE_SOURCE, include_dirs=[SAMPLE_INCLUDE], name="sample")


def test_the_default_cap(monkeypatch):
    monkeypatch.delenv("EBMESH_CACHE_MAX_BYTES", raising=False)
    assert object_cache.max_bytes() == 64 * 1024 * 1024
    monkeypatch.setenv("EBMESH_CACHE_MAX_BYTES", " 1000 ")
    assert object_cache.max_bytes() == 1000


COMPILE_VARIANTS = """
import hashlib, json, random, sys
from pathlib import Path
from ebmesh.toolchain.clang import build_object
data, variants, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
source = (data / "sample.bpf.c").read_text()
order = [variant for _ in range(2) for variant in range(variants)]
random.Random(seed).shuffle(order)
built = []
for variant in order:
    result = build_object(
        source + f"/* variant {variant} */\\n", include_dirs=[data / "include"], name="sample"
    )
    assert result.object[:4] == b"\\x7fELF"
    built.append((variant, hashlib.sha256(result.object).hexdigest(), result.cache_hit))
print(json.dumps(built))
"""


READ_WHILE_THEY_COMPILE = """
import json, sys
from pathlib import Path
from ebmesh.toolchain.object_cache import ObjectCache
objects = ObjectCache(Path(sys.argv[1]), limit=10**12)  # a reader: it never writes, never evicts
reads = broken = 0
while not Path(sys.argv[2]).exists():
    for entry in list(objects.directory.glob("*.o")):
        data = objects.get(entry.stem)
        if data is None:
            continue  # evicted between the listing and the read: what a compiler rebuilds
        reads += 1
        # An ELF64 object ends with its section header table: e_shoff + e_shnum * e_shentsize.
        end = int.from_bytes(data[0x28:0x30], "little") + int.from_bytes(
            data[0x3C:0x3E], "little"
        ) * int.from_bytes(data[0x3A:0x3C], "little")
        broken += len(data) != end
print(json.dumps({"reads": reads, "broken": broken}))
"""


def test_processes_compiling_and_evicting_at_once_never_read_a_broken_object(
    module_cache, tmp_path
):
    """Three processes build the same five objects twice each, in their own
    orders, into a cache that holds three, while a fourth reads every entry as
    fast as it can: entries are written, hit, evicted and rebuilt under each
    other's feet. Every build of an object has the same bytes, every object
    read is whole (a half-written or vanished entry read would not be), and the
    cache ends within its cap with no temporary file left."""
    size = len(build_object(SAMPLE_SOURCE, include_dirs=[SAMPLE_INCLUDE], name="sample").object)
    shared = tmp_path / "cache"
    shutil.copytree(module_cache / "vmlinux", shared / "vmlinux")  # bpftool once is enough
    cap, variants = 3 * size + size // 2, 5
    environment = {
        **os.environ,
        "EBMESH_CACHE_DIR": str(shared),
        "EBMESH_CACHE_MAX_BYTES": str(cap),
    }
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", COMPILE_VARIANTS, str(DATA), str(variants), str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
            cwd=REPO,
        )
        for seed in range(3)
    ]
    done = tmp_path / "done"
    reader = subprocess.Popen(
        [sys.executable, "-c", READ_WHILE_THEY_COMPILE, str(shared / "objects"), str(done)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        outputs = [process.communicate(timeout=300) for process in processes]
    finally:
        done.touch()
        read, read_errors = reader.communicate(timeout=60)
    for process, (_, errors) in zip(processes, outputs):
        assert process.returncode == 0, errors
    assert reader.returncode == 0, read_errors
    reads = json.loads(read)
    assert reads["reads"] > 0 and reads["broken"] == 0, reads
    builds = [build for out, _ in outputs for build in json.loads(out)]
    assert len(builds) == 3 * 2 * variants
    digests: dict[int, set[str]] = {}
    for variant, digest, _ in builds:
        digests.setdefault(variant, set()).add(digest)
    assert all(len(found) == 1 for found in digests.values()), digests
    assert len(set().union(*digests.values())) == variants

    entries = list((shared / "objects").glob("*.o"))
    assert 0 < len(entries) <= 3 and sum(p.stat().st_size for p in entries) <= cap
    assert not [p for p in (shared / "objects").iterdir() if p.name.endswith(".tmp")]


def test_vmlinux_header_is_generated_once_per_kernel(monkeypatch):
    header = vmlinux_header()
    assert header.name == "vmlinux.h" and header.parent.parent.name == "vmlinux"
    assert "struct sock {" in header.read_text()
    # Cached: bpftool is not needed a second time.
    monkeypatch.setenv("EBMESH_BPFTOOL", "/nonexistent/bpftool")
    assert vmlinux_header() == header


# -- errors ---------------------------------------------------------------------------


def test_c_that_does_not_compile_raises_toolchain_error_with_clang_output():
    broken = SAMPLE_SOURCE.replace("count(0);", "count(0, undeclared_thing);")
    with pytest.raises(ToolchainError) as raised:
        build_object(broken, include_dirs=[SAMPLE_INCLUDE], name="broken")
    assert "undeclared_thing" in raised.value.output
    assert "broken.c:" in raised.value.output and "error:" in raised.value.output
    assert "undeclared_thing" in str(raised.value)


def test_warnings_fail_the_build():
    sloppy = SAMPLE_SOURCE.replace("count(1);", "int unused_variable; count(1);")
    with pytest.raises(ToolchainError, match="unused_variable"):
        build_object(sloppy, include_dirs=[SAMPLE_INCLUDE], name="sloppy")


def test_missing_clang_is_an_environment_problem(monkeypatch, tmp_path):
    monkeypatch.setenv("EBMESH_CLANG", str(tmp_path / "no-such-clang"))
    with pytest.raises(EnvironmentProblem, match="make setup"):
        build_object("int x;", include_dirs=[])
    monkeypatch.delenv("EBMESH_CLANG")
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory
    with pytest.raises(EnvironmentProblem, match="clang not found.*make setup"):
        build_object("int x;", include_dirs=[])


def test_old_clang_is_an_environment_problem(monkeypatch, tmp_path):
    fake = tmp_path / "clang-10"
    fake.write_text("#!/bin/sh\necho 'clang version 10.0.1'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("EBMESH_CLANG", str(fake))
    with pytest.raises(EnvironmentProblem, match=">= 11"):
        build_object("int x;", include_dirs=[])


def test_missing_kernel_btf_or_bpftool_is_an_environment_problem(monkeypatch, tmp_path):
    with pytest.raises(EnvironmentProblem, match="CONFIG_DEBUG_INFO_BTF"):
        vmlinux_header(tmp_path / "no-btf")
    monkeypatch.setenv("EBMESH_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("EBMESH_BPFTOOL", str(tmp_path / "no-bpftool"))
    with pytest.raises(EnvironmentProblem, match="make setup"):
        vmlinux_header()


def test_missing_include_dir_is_reported(tmp_path):
    with pytest.raises(EnvironmentProblem, match="does not exist"):
        build_object("int x;", include_dirs=[tmp_path / "missing"])
