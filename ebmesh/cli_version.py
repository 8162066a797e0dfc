"""`ebmesh version`: this package's version and what it runs with (kernel, clang, libbpf).

`ebmesh --version` prints the package's alone, as `kubectl version --client`
would; `version` asks the machine, and says what is missing instead of failing.
"""

from __future__ import annotations

import os

from ebmesh.cli_style import Style, add_output_flag, print_json
from ebmesh.errors import EbmeshError


def package_version() -> str:
    """The installed distribution's version, else the source tree's."""
    from importlib import metadata

    try:
        return metadata.version("ebmesh")
    except metadata.PackageNotFoundError:
        import ebmesh

        return ebmesh.__version__


def add_commands(commands) -> None:
    version = commands.add_parser(
        "version", help="the versions of ebmesh, the kernel, clang and libbpf"
    )
    add_output_flag(version)
    version.set_defaults(run=cmd_version)


def _clang() -> dict | None:
    from ebmesh.toolchain.clang import clang_version, find_clang

    try:
        clang = find_clang()
        found = clang_version(clang)
    except EbmeshError as error:
        return {"version": None, "path": None, "problem": str(error)}
    return {"version": f"{found.major}.{found.minor}", "path": str(clang), "text": found.text}


def _libbpf() -> dict:
    from ebmesh.loader import LIBBPF_SONAME, libbpf_version

    try:
        major, minor = libbpf_version()
    except EbmeshError as error:
        return {"version": None, "library": LIBBPF_SONAME, "problem": str(error)}
    return {"version": f"{major}.{minor}", "library": LIBBPF_SONAME}


def versions() -> dict:
    return {
        "kind": "version",
        "ebmesh": package_version(),
        "kernel": os.uname().release,
        "clang": _clang(),
        "libbpf": _libbpf(),
    }


def cmd_version(args) -> int:
    found = versions()
    if Style.from_args(args).json:
        print_json(found)
        return 0
    print(f"ebmesh  {found['ebmesh']}")
    print(f"kernel  {found['kernel']}")
    for tool in ("clang", "libbpf"):
        part = found[tool]
        if part["version"] is None:
            print(f"{tool:<7} missing: {part['problem']}")
        else:
            where = part.get("path") or part.get("library")
            print(f"{tool:<7} {part['version']} ({where})")
    return 0
