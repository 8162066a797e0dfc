"""Compile generated eBPF C into a CO-RE object, cached by everything that shapes it.

The cache key covers the source, the name it is compiled under, the content
of every header clang can reach through our include directories (ours,
vmlinux.h, libbpf's), clang's version and the flags. Paths are deliberately
not part of the key: two checkouts with identical inputs share objects.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ebmesh.errors import EnvironmentProblem, ToolchainError
from ebmesh.toolchain.cache import cache_subdir, file_sha256, write_atomically
from ebmesh.toolchain.object_cache import ObjectCache
from ebmesh.toolchain.vmlinux import vmlinux_header

MIN_CLANG_MAJOR = 11
SETUP_ADVICE = "run `make setup` (or `apt-get install clang llvm libbpf-dev`)"

# bpf_tracing.h picks the pt_regs layout from __TARGET_ARCH_*; it must be the
# architecture whose vmlinux.h we include, i.e. this machine's.
_TARGET_ARCH = {
    "x86_64": "x86",
    "aarch64": "arm64",
    "arm64": "arm64",
    "s390x": "s390",
    "ppc64le": "powerpc",
    "riscv64": "riscv",
    "loongarch64": "loongarch",
}

# -Werror: warnings in generated C are ebmesh bugs, and some are silent
# disasters (an implicitly declared function becomes an unresolvable extern
# call that only fails at load time).
CLANG_FLAGS: tuple[str, ...] = (
    "-target",
    "bpf",
    "-g",
    "-O2",
    f"-D__TARGET_ARCH_{_TARGET_ARCH.get(platform.machine(), 'x86')}",
    "-mcpu=v3",
    "-Wall",
    "-Werror",
)

# clang searches these for <bpf/...> (see `clang -target bpf -E -v`).
_SYSTEM_INCLUDE_DIRS = (Path("/usr/local/include"), Path("/usr/include"))

_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_CACHE_FORMAT = b"ebmesh-object-cache-v1"


@dataclass(frozen=True)
class BuildResult:
    """A compiled object. `seconds` is the wall time of the whole `build_object` call."""

    object: bytes
    cache_hit: bool
    seconds: float
    key: str
    # Where it is cached; eviction (object_cache.py) may remove it at any time, so
    # hold on to `object`, not this.
    path: Path


@dataclass(frozen=True)
class ClangVersion:
    major: int
    minor: int
    text: str  # the first line of `clang --version`, part of the cache key


def build_object(source: str, *, include_dirs: Sequence[Path], name: str = "ebmesh") -> BuildResult:
    """Compile `source` (C) to an eBPF object, or return the cached one.

    `name` is the file name clang sees (`<name>.c`): it appears in clang's
    messages and in the object's debug info. Raises ToolchainError with
    clang's output if the C does not compile, EnvironmentProblem if clang,
    libbpf's headers or kernel BTF are missing.
    """
    started = time.perf_counter()
    if not _SAFE_NAME.fullmatch(name):
        raise ValueError(f"object name {name!r} must be a plain file name ([A-Za-z0-9_.-])")
    clang = find_clang()
    version = clang_version(clang)
    vmlinux_dir = vmlinux_header().parent
    our_dirs = [Path(d).resolve() for d in include_dirs]  # clang runs in a temporary cwd
    key = _cache_key(source, name, version, our_dirs, vmlinux_dir, libbpf_include_dir())
    objects = ObjectCache()
    data = objects.get(key)
    if data is not None:
        return BuildResult(data, True, time.perf_counter() - started, key, objects.path(key))
    data = _compile(clang, source, name, [vmlinux_dir, *our_dirs], key)
    path = objects.put(key, data)
    return BuildResult(data, False, time.perf_counter() - started, key, path)


def find_clang() -> Path:
    """`$EBMESH_CLANG` (a path or a command name), else `clang` on PATH."""
    override = os.environ.get("EBMESH_CLANG")
    if override:
        found = shutil.which(override)
        if found is None:
            raise EnvironmentProblem(
                f"EBMESH_CLANG={override!r} is not an executable: point it at clang "
                f">= {MIN_CLANG_MAJOR} or unset it, and {SETUP_ADVICE}"
            )
        return Path(found)
    found = shutil.which("clang")
    if found is None:
        raise EnvironmentProblem(
            f"clang not found on PATH; ebmesh needs clang >= {MIN_CLANG_MAJOR} "
            f"to build eBPF programs: {SETUP_ADVICE}"
        )
    return Path(found)


def clang_version(clang: Path) -> ClangVersion:
    """Parse `clang --version`; EnvironmentProblem if it is not clang >= 11."""
    stat = clang.stat()
    return _clang_version(str(clang), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _clang_version(clang: str, _mtime_ns: int, _size: int) -> ClangVersion:
    try:
        done = subprocess.run(
            [clang, "--version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise EnvironmentProblem(f"cannot run {clang} --version: {err}; {SETUP_ADVICE}") from err
    first_line = done.stdout.splitlines()[0].strip() if done.stdout.strip() else ""
    match = re.search(r"clang version (\d+)\.(\d+)", first_line)
    if done.returncode != 0 or match is None:
        raise EnvironmentProblem(
            f"{clang} does not look like clang (`--version` said {first_line or done.stderr!r}); "
            f"{SETUP_ADVICE}"
        )
    version = ClangVersion(int(match.group(1)), int(match.group(2)), first_line)
    if version.major < MIN_CLANG_MAJOR:
        raise EnvironmentProblem(
            f"{clang} is clang {version.major}.{version.minor}, but ebmesh needs clang >= "
            f"{MIN_CLANG_MAJOR} for CO-RE and BTF-defined maps: {SETUP_ADVICE}, "
            "or set EBMESH_CLANG to a newer clang"
        )
    return version


def libbpf_include_dir() -> Path:
    """The directory holding `bpf/bpf_helpers.h`, searched the way clang searches it."""
    for directory in _SYSTEM_INCLUDE_DIRS:
        if (directory / "bpf" / "bpf_helpers.h").is_file():
            return directory
    raise EnvironmentProblem(f"libbpf headers (bpf/bpf_helpers.h) not found: {SETUP_ADVICE}")


def _cache_key(
    source: str,
    name: str,
    version: ClangVersion,
    include_dirs: Sequence[Path],
    vmlinux_dir: Path,
    libbpf_dir: Path,
) -> str:
    digest = hashlib.sha256()

    def field(label: str, value: bytes) -> None:
        # Length-prefixed so that no two different inputs hash the same stream.
        for part in (label.encode(), value):
            digest.update(len(part).to_bytes(8, "little"))
            digest.update(part)

    field("format", _CACHE_FORMAT)
    field("source", source.encode())
    field("name", name.encode())
    field("clang", version.text.encode())
    field("flags", "\0".join(CLANG_FLAGS).encode())
    field("vmlinux.h", file_sha256(vmlinux_dir / "vmlinux.h").encode())
    # Order matters (first match wins in an #include search), the paths do not.
    for position, directory in enumerate(include_dirs):
        if not directory.is_dir():
            raise EnvironmentProblem(
                f"include directory {directory} does not exist; is the ebmesh installation "
                "complete? (`make setup` reinstalls it)"
            )
        field("include-dir", str(position).encode())
        for header in sorted(directory.rglob("*.h")):
            field(str(header.relative_to(directory)), header.read_bytes())
    for header in sorted((libbpf_dir / "bpf").glob("*.h")):
        field(f"libbpf/{header.name}", header.read_bytes())
    return digest.hexdigest()


def _compile(clang: Path, source: str, name: str, include_dirs: Sequence[Path], key: str) -> bytes:
    """`include_dirs[0]` is vmlinux.h's directory."""
    with tempfile.TemporaryDirectory(prefix="ebmesh-clang-") as workdir:
        source_file = Path(workdir) / f"{name}.c"
        object_file = Path(workdir) / f"{name}.o"
        source_file.write_text(source)
        command = [
            str(clang),
            *CLANG_FLAGS,
            # Keep the temporary and cache paths out of the debug info: rebuilds
            # are byte-identical, whoever's cache directory they ran in.
            f"-fdebug-prefix-map={workdir}=.",
            f"-fdebug-prefix-map={include_dirs[0]}=/ebmesh/vmlinux",
            *(f"-I{directory}" for directory in include_dirs),
            "-c",
            source_file.name,
            "-o",
            object_file.name,
        ]
        try:
            done = subprocess.run(
                command, cwd=workdir, capture_output=True, text=True, timeout=600, check=False
            )
        except subprocess.TimeoutExpired as err:
            raise ToolchainError(f"clang took more than {err.timeout}s on {name}.c") from err
        except OSError as err:
            raise EnvironmentProblem(f"cannot run {clang}: {err}; {SETUP_ADVICE}") from err
        if done.returncode != 0:
            _raise_compile_failure(done.stderr, source, name, key)
        return object_file.read_bytes()


def _raise_compile_failure(output: str, source: str, name: str, key: str) -> None:
    if "No available targets are compatible" in output or "unknown target" in output:
        raise EnvironmentProblem(
            f"this clang cannot target BPF: {output.strip()}; install Debian's clang ({SETUP_ADVICE})"
        )
    # Keep the generated C around: the message points into it, and it is an ebmesh bug.
    kept = cache_subdir("failed") / f"{name}-{key[:16]}.c"
    write_atomically(kept, source.encode())
    raise ToolchainError(f"clang failed to compile {name}.c (source kept at {kept})", output)
