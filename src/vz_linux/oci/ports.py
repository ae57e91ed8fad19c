"""``-p [HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp]``: Docker's port-mapping syntax, TCP only."""

from __future__ import annotations

import ipaddress
import re

from ..errors import PortSpecError
from ..vm.port_forward import ForwardSpec

DEFAULT_HOST_IP = "127.0.0.1"  # never all interfaces unless asked (Docker's default is 0.0.0.0)
_SPEC = re.compile(r"^(?:(?P<ip>\[[^\]]*\]|[^:\[\]]+):)?(?P<host>[^:]+):(?P<guest>[^:/]+)(?:/(?P<proto>\w+))?$")


def _port(text: str, what: str, spec: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise PortSpecError(f"port mapping {spec!r}: {what} port {text!r} is not a number 1..65535")
    return int(text)


def parse_port(spec: str) -> ForwardSpec:
    m = _SPEC.match(spec.strip())
    if m is None:
        raise PortSpecError(f"port mapping {spec!r} is not [HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp]",
                            hint="e.g. -p 8080:80 or -p 127.0.0.1:8080:80")
    proto = m["proto"] or "tcp"
    if proto != "tcp":
        raise PortSpecError(f"port mapping {spec!r}: only tcp is forwarded, not {proto}")
    ip = (m["ip"] or DEFAULT_HOST_IP).strip("[]")
    try:
        ip = str(ipaddress.ip_address(ip))
    except ValueError:
        raise PortSpecError(f"port mapping {spec!r}: {ip!r} is not an IP address") from None
    return ForwardSpec(ip, _port(m["host"], "host", spec), _port(m["guest"], "container", spec))


def parse_ports(specs: tuple[str, ...] | list[str]) -> tuple[ForwardSpec, ...]:
    out = tuple(parse_port(s) for s in specs)
    seen: set[tuple[str, int]] = set()
    for f in out:
        if (f.host_ip, f.host_port) in seen:
            raise PortSpecError(f"host port {f.host_ip}:{f.host_port} is mapped twice")
        seen.add((f.host_ip, f.host_port))
    return out
