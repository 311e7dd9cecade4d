"""The listening socket of our local web servers (the chat API and page, the labeling page).

Bound before the app starts, so a taken port fails in a second with one line, and port 0 picks a free
port whose URL can be printed before serving. Both servers refuse a request whose Host header names
another server (host_refusal), so a web page cannot reach them by re-pointing its own name here."""

from __future__ import annotations

import ipaddress
import socket

from pipeline.errors import UserError


def bind(host: str, port: int, *, what: str, other_port: str, backlog: int = 128) -> socket.socket:
    """A listening socket on host:port; `what` names the server and `other_port` the option that
    changes the port, for the one-line error when the address is taken or not ours."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"cannot serve {what} on {host}:{port} ({e.strerror}); choose another with "
                        f"{other_port}, or port 0 for a free one.") from None
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def host_name(header: str) -> str:
    """The name in a Host header, lower-cased, without the port and an IPv6 address's brackets."""
    header = header.strip().lower()
    if header.startswith("["):  # [::1]:8000
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _ip(name: str):
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def host_refusal(header: str | None, bound: str, option: str) -> str | None:
    """Why a request with this Host header is refused by a server bound to `bound` (the address set by
    `option`), or None when the header names this server: a loopback name, or `bound` itself when it is a
    name or address of its own (listening on every interface widens nothing: name the address with
    `option`). A web page whose own name was re-pointed at this machine (DNS rebinding) sends that name,
    so the browser cannot make it talk to the server."""
    name, bound = host_name(header or ""), bound.lower()
    ip, bound_ip = _ip(name), _ip(bound)
    own = () if bound_ip is not None and bound_ip.is_unspecified else (bound,)
    allowed = list(dict.fromkeys(LOOPBACK_NAMES + own))
    if name in allowed or (ip is not None and any(ip == _ip(a) for a in allowed)):
        return None
    return (f"unexpected Host {name!r}: this server answers only to {', '.join(allowed)} (another name or address: "
            f"listen on it with {option})")
