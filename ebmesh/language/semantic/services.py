"""Services: connectable ports, weights in range, one family, no duplicates."""

from __future__ import annotations

from ebmesh.datapath.limits import MAX_SERVICES, MAX_WEIGHT
from ebmesh.language.ast import Backend, Mesh, Service, Span
from ebmesh.language.semantic.report import Report, first_on, line_of


def check_services(mesh: Mesh, report: Report) -> None:
    if len(mesh.services) > MAX_SERVICES:
        report.error(
            mesh.services[MAX_SERVICES].name.span,
            f"cannot be enforced as written: {len(mesh.services)} services, the datapath "
            f"tells at most {MAX_SERVICES} apart",
            hint="split the mesh, or merge services",
        )
    address_owner: dict[tuple, Service] = {}
    for service in mesh.services:
        _check_connectable(
            service.vip, service.vip_span, service.port, service.port_span, "service", report
        )
        key = (service.vip, service.port, service.protocol)
        if key in address_owner:
            first = address_owner[key]
            report.error(
                service.vip_span or service.name.span,
                f"{_endpoint(service)}/{service.protocol} is already the address of service "
                f"'{first.name.value}'{line_of(first.name.span)}",
                hint="two services cannot share an address, port and protocol",
            )
        else:
            address_owner[key] = service
        _check_backends(service, report)


def _check_backends(service: Service, report: Report) -> None:
    seen: dict[tuple, Backend] = {}
    for backend in service.backends:
        _check_connectable(
            backend.address,
            backend.address_span,
            backend.port,
            backend.port_span,
            "backend",
            report,
        )
        if backend.address.version != service.vip.version:
            report.error(
                backend.address_span or backend.span,
                f"backend {backend.address} is IPv{backend.address.version} but the service address "
                f"{service.vip} is IPv{service.vip.version}",
                hint="a service and its backends are of one family",
            )
        if not 0 <= backend.weight <= MAX_WEIGHT:
            report.error(
                backend.weight_span or backend.span,
                f"weight {backend.weight} is outside 0-{MAX_WEIGHT}",
            )
        key = (backend.address, backend.port)
        if key in seen:
            report.error(
                backend.span,
                f"backend {_address(backend.address)}:{backend.port} is listed twice in service "
                f"'{service.name.value}'{first_on(seen[key].span)}",
                hint="list it once; its weight is its share of the connections",
            )
        else:
            seen[key] = backend
    if not any(b.weight > 0 for b in service.backends):
        report.error(
            service.name.span,
            f"service '{service.name.value}' has no backend with a nonzero weight",
            hint="add `backend ADDRESS:PORT` (the weight defaults to 1)",
        )


def _check_connectable(
    address, address_span: Span | None, port: int, port_span: Span | None, what: str, report: Report
) -> None:
    if address.is_unspecified:
        report.error(
            address_span, f"{address} cannot be a {what} address: it is the unspecified address"
        )
    if not 0 <= port <= 65535:
        report.error(port_span, f"port {port} is outside 0-65535")
    elif port == 0:
        report.error(port_span, f"port 0 cannot be a {what} port: no connection can be made to it")


def _endpoint(service: Service) -> str:
    return f"{_address(service.vip)}:{service.port}"


def _address(address) -> str:
    return f"[{address}]" if address.version == 6 else str(address)
