"""Bringing a running attachment up to date with an edited policy.

If only services' backends changed, they are changed in place
(`Attachment.set_backends`: no reload, no failed connection). Anything else
means new tables: `Attachment.replace` swaps each hook's program for the new
policy's in one step, so there is no moment with no policy, nor with two.
"""

from __future__ import annotations

import dataclasses

from ebmesh.ir.model import Policy, Service
from ebmesh.policy import CompiledPolicy
from ebmesh.runtime.attachment import Attachment


def _weights(service: Service) -> list[tuple[str, int]]:
    return [(b.endpoint, b.weight) for b in service.backends]


def backend_changes(old: Policy, new: Policy) -> dict[str, dict[str, int]] | None:
    """{service: {"ADDR:PORT": weight}} for services whose backends changed, if
    nothing else did (rules, workloads, settings, even line numbers); else None."""

    def without_backends(policy: Policy) -> Policy:
        services = tuple(dataclasses.replace(s, backends=()) for s in policy.services)
        return dataclasses.replace(policy, services=services)

    if without_backends(old) != without_backends(new):
        return None
    return {
        after.name: dict(_weights(after))
        for before, after in zip(old.services, new.services)
        if _weights(before) != _weights(after)
    }


def bring_up_to_date(
    attachment: Attachment, running: CompiledPolicy, edited: CompiledPolicy
) -> str:
    """Make the attachment enforce `edited` instead of `running`; what was done.

    If the edited policy cannot be loaded (say, a new workload's cgroup does
    not exist), the error propagates and `running` stays in force.
    """
    changes = backend_changes(running.policy, edited.policy)
    if changes == {}:
        return "nothing to change"
    if changes is not None:
        for service, backends in changes.items():
            attachment.set_backends(service, backends)
        return f"backends of {', '.join(sorted(changes))} changed in place"
    attachment.replace(edited.image)
    return "policy replaced: each hook's program swapped in one step"
