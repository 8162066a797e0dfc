"""The "must reach" targets of issue 10 (the mesh comparison) and issue 8 (the
datapath's cost), each computed from this run's figures: the measured value,
the bound, and whether it is met. A target whose part did not run is listed as
not measured, never as met."""

from __future__ import annotations

import statistics

import mesh as mesh_part


def _check(issue: int, name: str, value, bound: float, op: str, unit: str = "x") -> dict:
    if value is None:
        met = None
    else:
        met = value <= bound if op == "<=" else value >= bound if op == ">=" else value < bound
    return {
        "issue": issue,
        "target": name,
        "value": value,
        "bound": f"{op} {bound:,.0f}{unit}" if unit == " ns" else f"{op} {bound:.3g}{unit}",
        "met": met,
    }


def _lighter_sidecar(mesh: dict, field: str):
    """The sidecar with the smaller figure: the harder bar for ebmesh to clear."""
    values = [
        mesh["configs"][key][field]
        for key in mesh_part.SIDECARS
        if key in mesh["configs"] and mesh["configs"][key][field] is not None
    ]
    return min(values) if values else None


def _paired_ratio(figures: list[float], bases: list[float]) -> float | None:
    """The median of the per-round ratios, as the mesh part's ratios: the two figures
    of a ratio come from one round (the cost part measures every configuration in
    each round), so what the machine did between rounds cancels out."""
    ratios = [figure / base for figure, base in zip(figures, bases) if base]
    return statistics.median(ratios) if ratios else None


def evaluate(results: dict) -> list[dict]:
    mesh = results.get("mesh")
    memory = results.get("memory")
    cost = results.get("cost")
    checks = []

    def mesh_ratio(key, base, pick):
        return mesh_part.ratio(mesh, key, base, pick) if mesh else None

    tcp, udp = mesh_part.p50("tcp_64"), mesh_part.p50("udp_64")
    throughput = lambda r: r["iperf3"]["gbit_per_s"]  # noqa: E731
    rate = lambda r: r["connection_rate"]["per_second"]  # noqa: E731
    checks += [
        _check(10, "ebmesh (1k rules) / no mesh, TCP 64 B p50", mesh_ratio("ebmesh", "none", tcp), 1.05, "<="),
        _check(10, "ebmesh (1k rules) / no mesh, UDP 64 B p50", mesh_ratio("ebmesh", "none", udp), 1.05, "<="),
        _check(10, "accelerate on / no mesh, TCP 64 B p50", mesh_ratio("accel", "none", tcp), 0.8, "<="),
        _check(10, "accelerate on / no mesh, throughput", mesh_ratio("accel", "none", throughput), 1.2, ">="),
        _check(10, "HAProxy pair / ebmesh, TCP 64 B p50", mesh_ratio("haproxy", "ebmesh", tcp), 1.5, ">="),
    ]  # fmt: skip
    memory_ratio = None
    if memory is not None and mesh is not None:
        rows = memory["comparison"]["rows"]
        largest = max(rows.values(), key=lambda row: row["workloads"])
        sidecars = [largest[k] for k in ("haproxy_bytes", "nginx_bytes") if k in largest]
        if sidecars:
            memory_ratio = largest["ebmesh_bytes"] / min(sidecars)
    checks.append(
        _check(10, "memory, ebmesh / proxies (the lighter), most workloads",
               memory_ratio, 0.1, "<")
    )  # fmt: skip
    cpu_ratio = None
    if mesh is not None and "ebmesh" in mesh["configs"]:
        lighter = _lighter_sidecar(mesh, "cpu_s_per_100k_requests")
        mine = mesh["configs"]["ebmesh"]["cpu_s_per_100k_requests"]
        cpu_ratio = mine / lighter if lighter else None
    checks.append(
        _check(10, "CPU per request, ebmesh / sidecars (lighter pair)", cpu_ratio, 1 / 3, "<")
    )

    largest = direct = vip = udp_one = bare = None
    spread = None
    if cost is not None:
        configs = cost["configs"]
        sizes = cost["settings"]["sizes"]
        top = configs.get(f"{max(sizes)}/denied")
        if top is not None:
            largest = top["kinds"]["tcp_direct"]
            connect4 = [
                p["ns_per_run"]
                for p in largest["programs"].values()
                if p["hook"] == "CGROUP_INET4_CONNECT"
            ]
            direct = largest["ns_per_operation"]
            bare = largest["over_bare_ns_per_operation"]
            vip = top["kinds"]["tcp_vip"]["ns_per_operation"] / direct if direct else None
            udp_one = top["kinds"]["udp_one"]["ns_per_operation"]
            checks.append(
                _check(8, f"connect4 ns per run, {max(sizes):,} rules, TCP direct",
                       connect4[0] if connect4 else None, 250, "<=", " ns")
            )  # fmt: skip
        if len(sizes) > 1:
            ratios = []
            for events in ("denied", "all"):
                low = configs.get(f"{min(sizes)}/{events}")
                high = configs.get(f"{max(sizes)}/{events}")
                if low and high:
                    for kind, figure in high["kinds"].items():
                        ratio = _paired_ratio(
                            figure["ns_per_operation_rounds"],
                            low["kinds"][kind]["ns_per_operation_rounds"],
                        )
                        if ratio is not None:
                            ratios.append(ratio)
            spread = max(ratios) if ratios else None
    checks += [
        _check(8, "one TCP connection, all programs (largest size, denied)", direct, 1500, "<=", " ns"),
        _check(8, "one TCP connection, over the bare hooks", bare, 500, "<=", " ns"),
        _check(8, "VIP connection / direct connection (BPF time)", vip, 1.3, "<="),
        _check(8, "UDP request/reply on one socket, BPF time", udp_one, 800, "<=", " ns"),
        _check(8, "connection rate, ebmesh / no mesh", mesh_ratio("ebmesh", "none", rate), 0.95, ">="),
        _check(8, "sockperf UDP ping-pong p50, ebmesh / no mesh", mesh_ratio("ebmesh", "none", udp), 1.05, "<="),
        _check(8, "every figure, largest size / smallest (worst)", spread, 1.1, "<="),
    ]  # fmt: skip
    return checks


def print_report(checks: list[dict]) -> None:
    print()
    print("Must reach (issues 10 and 8), as measured in this run:")
    for check in checks:
        value = check["value"]
        if value is None:
            shown, verdict = "not measured", "-"
        else:
            unit = " ns" if check["bound"].endswith("ns") else "x"
            shown = f"{value:.0f}{unit}" if unit == " ns" else f"{value:.3f}x"
            verdict = "met" if check["met"] else "NOT met"
        print(
            f"  issue {check['issue']:>2}: {check['target']:<58} {shown:>12}  "
            f"(goal {check['bound']:<9}) {verdict}"
        )


def floor_text(results: dict) -> str | None:
    """What the hooks themselves cost, to read the p50 ratios against: empty programs
    on ebmesh's hooks / no mesh, and ebmesh / those empty programs (None: not run)."""
    mesh = results.get("mesh")
    if not mesh or "bare" not in mesh["configs"]:
        return None
    cells = []
    for label, pick in (
        ("TCP 64 B p50", mesh_part.p50("tcp_64")),
        ("UDP 64 B p50", mesh_part.p50("udp_64")),
        ("connection rate", lambda r: r["connection_rate"]["per_second"]),
    ):
        floor = mesh_part.ratio(mesh, "bare", "none", pick)
        own = mesh_part.ratio(mesh, "ebmesh", "bare", pick)
        if floor is not None and own is not None:
            cells.append(
                f"{label}: empty programs / no mesh {floor:.3f}x, ebmesh / empty programs {own:.3f}x"
            )
    return "the floor, on the same hooks: " + "; ".join(cells) if cells else None


def print_floor(results: dict) -> None:
    text = floor_text(results)
    if text:
        print("  " + text)
