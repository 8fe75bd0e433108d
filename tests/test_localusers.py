"""Unit level: who owns a loopback connection, as the kernel says (Linux netlink sock_diag)."""

from __future__ import annotations

import encodings.idna  # noqa: F401 - loaded before the child drops to a user who cannot read the stdlib
import os
import socket
import time

import pytest
from memproxy.addons.localusers import AVAILABLE, socket_owner

pytestmark = pytest.mark.skipif(not AVAILABLE, reason="netlink is Linux's")


def accepted(family: int, host: str, client_family: int | None = None) -> tuple[socket.socket, ...]:
    server = socket.socket(family)
    if family == socket.AF_INET6 and client_family == socket.AF_INET:
        server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    server.bind((host, 0))
    server.listen()
    client = socket.socket(client_family or family)
    client.connect(("127.0.0.1" if client_family == socket.AF_INET else host, server.getsockname()[1]))
    conn, _ = server.accept()
    return server, client, conn


@pytest.mark.parametrize(
    "family, host, client_family",
    [(socket.AF_INET, "127.0.0.1", None), (socket.AF_INET6, "::1", None), (socket.AF_INET6, "::", socket.AF_INET)],
    ids=["ipv4", "ipv6", "ipv4-on-a-dual-stack-listener"],
)
def test_the_owner_of_this_process_connection_is_this_user(family, host, client_family):
    server, client, conn = accepted(family, host, client_family)
    with server, client, conn:
        assert socket_owner(conn.getpeername(), conn.getsockname()) == os.geteuid()


def test_a_connection_that_is_not_there_has_no_owner():
    server, client, conn = accepted(socket.AF_INET, "127.0.0.1")
    with server, client, conn:
        assert socket_owner(("127.0.0.1", 1), conn.getsockname()) is None


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to connect as another user")
def test_another_users_connection_is_theirs():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(10)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child connects as nobody, then waits to be told to go
            try:
                os.setuid(65534)
                client = socket.socket()
                client.connect(server.getsockname())
                os.read(read, 1)
                client.close()
            finally:
                os._exit(0)
        conn, peer = server.accept()
        try:
            deadline = time.monotonic() + 10
            while (owner := socket_owner(peer, conn.getsockname())) is None and time.monotonic() < deadline:
                time.sleep(0.01)
            assert owner == 65534
        finally:
            os.write(write, b"x")
            os.waitpid(pid, 0)
            conn.close()
