"""The sidecar mesh the benchmark compares ebmesh with: two L4 proxies per path.

A mesh puts a proxy beside each workload: the client's traffic goes to its own
proxy, which connects to the server's proxy, which connects to the server. Here
all four are on loopback, each proxy in its workload's cgroup:

    client -> client-side proxy -> server-side proxy -> server

The configurations below are written from scratch, not from the packages'
defaults (Debian's /etc/haproxy/haproxy.cfg and /etc/nginx/nginx.conf): no
stats socket, no chroot, no user switch, no HTTP, no log file outside the run's
directory, every listener on a 127.x address of this run. HAProxy runs in TCP
mode (`mode tcp`), nginx with its `stream` module; both forward bytes without
parsing them, which is less work than Envoy (Istio's sidecar) does even for
plain TCP, so this comparison flatters the sidecars. Threads and workers are
left at the tools' defaults (HAProxy: one thread per CPU; nginx: one worker).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

NGINX_STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


@dataclass(frozen=True)
class Hop:
    """One forwarded port: listen here, connect there, from that source address."""

    listen: tuple[str, int]
    upstream: tuple[str, int]
    source: str
    protocol: str  # "tcp" or "udp"


def haproxy_config(name: str, hops: list[Hop]) -> str:
    if any(hop.protocol != "tcp" for hop in hops):
        raise ValueError("HAProxy proxies TCP only (its UDP support is for syslog)")
    lines = [
        f"# bench/sidecars.py: the {name} proxy",
        "global",
        "    maxconn 4096",
        "defaults",
        "    mode tcp",
        "    timeout connect 5s",
        "    timeout client 60s",
        "    timeout server 60s",
    ]
    for index, hop in enumerate(hops):
        lines += [
            f"listen hop{index}",
            f"    bind {hop.listen[0]}:{hop.listen[1]}",
            f"    server upstream {hop.upstream[0]}:{hop.upstream[1]} source {hop.source}",
        ]
    return "\n".join(lines) + "\n"


def haproxy_command(config: Path) -> list[str]:
    # -db: stay in the foreground (the benchmark owns the process); -W is not used, so
    # there is no master process: one process, the proxy itself.
    return ["haproxy", "-db", "-f", str(config)]


def nginx_config(name: str, hops: list[Hop], workdir: Path) -> str:
    lines = [
        f"# bench/sidecars.py: the {name} proxy",
        f"load_module {NGINX_STREAM_MODULE};",
        "daemon off;",
        f"pid {workdir / (name + '.pid')};",
        f"error_log {workdir / (name + '-error.log')} warn;",
        "events { worker_connections 4096; }",
        "stream {",
        "    proxy_timeout 60s;",
    ]
    for hop in hops:
        udp = " udp" if hop.protocol == "udp" else ""
        lines += [
            "    server {",
            f"        listen {hop.listen[0]}:{hop.listen[1]}{udp};",
            f"        proxy_bind {hop.source};",
            f"        proxy_pass {hop.upstream[0]}:{hop.upstream[1]};",
            "    }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def nginx_command(config: Path, workdir: Path) -> list[str]:
    # -e: nginx opens its default error log (/var/log/nginx) before reading the
    # configuration unless told another one.
    return ["nginx", "-c", str(config), "-p", str(workdir), "-e", str(workdir / "nginx-boot.log")]
