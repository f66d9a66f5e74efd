# SPDX-License-Identifier: Apache-2.0
"""Loopback TCP ports for the servers a test starts."""

import socket


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on just now (the
    kernel's choice; another process may take it before the test does,
    which the loopback of one test machine makes unlikely)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
