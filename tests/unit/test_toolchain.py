"""ebmesh.toolchain: building eBPF objects with clang, the cache, vmlinux.h.

These tests run the real clang and bpftool (installed by `make setup`) and
read the running kernel's BTF; nothing is loaded into the kernel. Reading
objects back is ebmesh.loader.inspect's job (test_inspect.py).
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from ebmesh.errors import EnvironmentProblem, ToolchainError
from ebmesh.toolchain import cache
from ebmesh.toolchain.clang import build_object
from ebmesh.toolchain.vmlinux import vmlinux_header

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
