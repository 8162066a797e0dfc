"""vmlinux.h: every kernel type, generated from the running kernel's BTF.

CO-RE programs include it instead of kernel headers. It is derived purely from
/sys/kernel/btf/vmlinux, so it is generated once per kernel build and cached
under the sha256 of that file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from ebmesh.errors import EnvironmentProblem, ToolchainError
from ebmesh.toolchain.cache import cache_subdir, file_sha256, write_atomically

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")

# Debian installs bpftool in /usr/sbin, which is not on a normal user's PATH.
_SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")

SETUP_ADVICE = "run `make setup` (or `apt-get install bpftool`)"


def vmlinux_header(btf_path: Path = VMLINUX_BTF) -> Path:
    """Path of a vmlinux.h matching the kernel BTF at `btf_path`, generating it if needed.

    The file lives alone in its directory (`<cache>/vmlinux/<sha256>/vmlinux.h`),
    so that directory can be passed to clang as `-I`.
    """
    if not btf_path.is_file():
        raise EnvironmentProblem(
            f"kernel BTF not found at {btf_path}: ebmesh needs a kernel built with "
            "CONFIG_DEBUG_INFO_BTF=y (Debian 12's stock kernels have it); boot such a kernel"
        )
    try:
        btf_digest = file_sha256(btf_path)
    except OSError as err:
        raise EnvironmentProblem(f"cannot read kernel BTF {btf_path}: {err.strerror}") from err
    header = cache_subdir("vmlinux", btf_digest) / "vmlinux.h"
    if not header.is_file():
        write_atomically(header, _dump_btf_as_c(btf_path))
    return header


def find_bpftool() -> Path:
    """`$EBMESH_BPFTOOL`, else `bpftool` on PATH or in the usual sbin directories."""
    override = os.environ.get("EBMESH_BPFTOOL")
    if override:
        found = shutil.which(override)
        if found is None:
            raise EnvironmentProblem(
                f"EBMESH_BPFTOOL={override!r} is not an executable; "
                f"point it at bpftool or unset it, and {SETUP_ADVICE}"
            )
        return Path(found)
    search_path = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN_DIRS])
    found = shutil.which("bpftool", path=search_path)
    if found is None:
        raise EnvironmentProblem(f"bpftool not found: {SETUP_ADVICE}")
    return Path(found)


def _dump_btf_as_c(btf_path: Path) -> bytes:
    bpftool = find_bpftool()
    command = [str(bpftool), "btf", "dump", "file", str(btf_path), "format", "c"]
    try:
        done = subprocess.run(command, capture_output=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ToolchainError(f"could not run {' '.join(command)}: {err}") from err
    if done.returncode != 0 or not done.stdout:
        raise ToolchainError(
            f"bpftool failed to dump {btf_path} as C (exit {done.returncode})",
            done.stderr.decode(errors="replace"),
        )
    return done.stdout
