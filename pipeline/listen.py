"""The listening socket of our local web servers (the chat API and page, the labeling page).

Bound before the app starts, so a taken port fails in a second with one line, and port 0 picks a free
port whose URL can be printed before serving."""

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
