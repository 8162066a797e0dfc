"""ebmesh: a sidecar-free service mesh, compiled to eBPF and enforced at the socket.

import ebmesh
compiled = ebmesh.compile(Path("shop.mesh"))
with compiled.attach("/sys/fs/cgroup/unified/shop") as attachment:
    for event in attachment.events():
        print(event)
"""

from ebmesh.errors import (
    AttachError,
    Diagnostic,
    EbmeshError,
    EnvironmentProblem,
    LibbpfError,
    PolicyError,
    SourceLocation,
    ToolchainError,
)

__version__ = "0.1.0"


def compile(policy, *, filename="<policy>", progress=None):  # noqa: A001 - the API's name
    """Compile a policy (text, a pathlib.Path, or a parsed PolicyFile) to a CompiledPolicy.

    `filename` names policy text in diagnostics; `progress(phase)` is called as
    each phase starts (ebmesh.compiler.PHASES)."""
    from ebmesh.compiler import compile as _compile

    return _compile(policy, filename=filename, progress=progress)


def __getattr__(name):
    # The heavier classes load on first use: `import ebmesh` stays cheap.
    if name == "CompiledPolicy":
        from ebmesh.policy import CompiledPolicy

        return CompiledPolicy
    if name in ("Evaluation", "EvaluationError"):
        from ebmesh.runtime import evaluator

        return getattr(evaluator, name)
    if name == "Attachment":
        from ebmesh.runtime.attachment import Attachment

        return Attachment
    if name == "VerdictEvent":
        from ebmesh.runtime.events import VerdictEvent

        return VerdictEvent
    raise AttributeError(f"module 'ebmesh' has no attribute {name!r}")


__all__ = [
    "AttachError",
    "Attachment",
    "CompiledPolicy",
    "Diagnostic",
    "EbmeshError",
    "EnvironmentProblem",
    "Evaluation",
    "EvaluationError",
    "LibbpfError",
    "PolicyError",
    "SourceLocation",
    "ToolchainError",
    "VerdictEvent",
    "compile",
]
