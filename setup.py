"""ebmesh: a sidecar-free service mesh compiled to eBPF."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def data_files(folder):
    """grammar/ and bpf_src/ live beside the package; installed copies go to share/ebmesh."""
    files = sorted(str(p) for p in (HERE / folder).rglob("*") if p.is_file())
    return [(f"share/ebmesh/{folder}", [str(Path(f).relative_to(HERE)) for f in files])]


setup(
    name="ebmesh",
    version="0.1.0",
    description="A sidecar-free service mesh: policies compiled to eBPF, enforced at the socket",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["ebmesh", "ebmesh.*"]),
    install_requires=[
        # Tested with lark 1.3.1 and pydantic 2.14.4. The error recovery
        # (ebmesh/language/syntax_errors.py) drives Lark's LALR parser state,
        # which has moved between minor versions: the next minor is untested.
        "lark>=1.1.9,<1.4",
        "pydantic>=2.5,<3",
        "pyelftools>=0.30,<1",
        # inotify for the cgroup tree an attachment watches (ebmesh/runtime/watcher.py)
        "inotify_simple>=1.3,<3",
        # mTLS (ebmesh/mtls): keys and X.509 SVIDs. Tested with 50.0.2; 43 is the first
        # with the not_valid_*_utc and verify_directly_issued_by APIs used there.
        "cryptography>=43,<51",
        # The CLI's colour, status table and progress (ebmesh/cli_style.py, cli_progress.py);
        # tested with 15.0.0, whose Console, Table, Progress and Style APIs date from 13.
        "rich>=13,<16",
        # `ebmesh completion bash|zsh` from the argparse parser (ebmesh/cli_completion.py);
        # tested with 1.13.0 (shtab.complete and shtab.FILE are 1.x API).
        "shtab>=1.7,<2",
        # Prometheus metrics of an attachment (ebmesh/runtime/metrics.py): a custom
        # Collector and its HTTP server. Tested with 0.26.0; 1.0 may change those APIs.
        "prometheus-client>=0.20,<1",
    ],
    extras_require={
        "dev": ["pytest>=7.4", "hypothesis>=6.90", "ruff>=0.4"],
        # bench/ draws its chart with matplotlib (tested with 3.11); the next major is untested.
        "bench": ["matplotlib>=3.7,<4"],
    },
    data_files=data_files("grammar") + data_files("bpf_src"),
    entry_points={"console_scripts": ["ebmesh = ebmesh.cli:main"]},
    license="Apache-2.0",
)
