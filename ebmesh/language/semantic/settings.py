"""Settings: each at most once, each with a valid value; a usable trust domain."""

from __future__ import annotations

import re

from ebmesh.language.ast import Mesh, Setting
from ebmesh.language.semantic.report import Report, first_on
from ebmesh.language.suggest import did_you_mean, quoted_list

VALUES: dict[str, tuple[str, ...]] = {
    "default": ("deny", "allow"),
    "mode": ("enforce", "audit"),
    "accelerate": ("on", "off"),
}

# SPIFFE: a trust domain is lowercase letters, digits, '.', '-' and '_'.
TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")


def check_settings(mesh: Mesh, report: Report) -> None:
    first: dict[str, Setting] = {}
    for setting in mesh.settings:
        if setting.key in first:
            report.error(
                setting.span,
                f"'{setting.key}' is set twice{first_on(first[setting.key].span)}",
                hint="keep one of them",
            )
        else:
            first[setting.key] = setting
        if setting.key == "trust_domain":
            _check_trust_domain(setting, report)
        else:
            _check_value(setting, report)
    if "trust_domain" not in first and not TRUST_DOMAIN.fullmatch(mesh.name.value):
        report.error(
            mesh.name.span,
            f"the mesh name '{mesh.name.value}' cannot be the trust domain, which defaults to it",
            hint=f'add `trust_domain "{_trust_domain_like(mesh.name.value)}"` to the mesh',
        )


def _check_value(setting: Setting, report: Report) -> None:
    valid = VALUES[setting.key]
    if setting.value in valid:
        return
    suggestion = did_you_mean(setting.value, valid)
    listing = f"'{setting.key}' is {quoted_list(valid)}"
    report.error(
        setting.value_span,
        f"invalid value '{setting.value}' for '{setting.key}'",
        hint=f"{suggestion} {listing}" if suggestion else listing,
    )


def _check_trust_domain(setting: Setting, report: Report) -> None:
    value = setting.value
    if TRUST_DOMAIN.fullmatch(value):
        return
    if value.startswith("spiffe://"):
        hint = f'write the trust domain alone: trust_domain "{value[len("spiffe://") :].split("/")[0]}"'
    else:
        hint = (
            "a trust domain is lowercase letters, digits, '.', '-' and '_', e.g. \"shop.example\""
        )
    report.error(setting.value_span, f'invalid trust domain "{value}"', hint=hint)


def _trust_domain_like(name: str) -> str:
    return re.sub(r"[^a-z0-9._-]", "", name.lower()) or "example.org"


def trust_domain(mesh: Mesh) -> str:
    """The mesh's trust domain: its `trust_domain` setting, else its name."""
    for setting in mesh.settings:
        if setting.key == "trust_domain":
            return setting.value
    return mesh.name.value
