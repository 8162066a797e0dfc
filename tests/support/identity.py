"""Identity directories of a mesh spread over hosts, as the tests and benchmarks lay them out."""

from __future__ import annotations

import shutil
from pathlib import Path

from ebmesh.mtls import IdentityStore


def second_host(store: IdentityStore, directory: Path, workload: str, spiffe_id: str) -> Path:
    """The identity directory of another host running `workload`: the first host's
    bundle, and that workload's SVID issued by the first host's issuer and moved there
    (as SPIRE would deliver it), so that only the second host holds it."""
    (directory / "svid").mkdir(parents=True)
    shutil.copy(store.directory / "bundle.pem", directory / "bundle.pem")
    store.issue(workload, spiffe_id)
    for suffix in (".pem", ".key"):
        name = f"{workload}{suffix}"
        shutil.move(store.directory / "svid" / name, directory / "svid" / name)
    return directory
