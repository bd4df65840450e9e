"""Free loopback ports for the servers the tests start."""

from __future__ import annotations

import contextlib
import socket


def free_ports(n: int = 1) -> list[int]:
    """``n`` distinct free ports on 127.0.0.1.

    All ``n`` sockets stay bound until every port is chosen: binding one at a time and closing it
    lets the kernel hand the same port out twice (CI once gave Triton's HTTP and metrics servers one
    port, and Triton refused to start).
    """
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def free_port() -> int:
    return free_ports(1)[0]
