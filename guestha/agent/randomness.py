# SPDX-License-Identifier: Apache-2.0
"""The agent's source of randomness for the protocol: one buffered
``SystemRandom`` (:data:`SHARED`) for every instance's connection and
heartbeat."""

import os
import secrets
import threading


class BufferedSystemRandom(secrets.SystemRandom):
    """The randomness of every instance's connection and heartbeat (nonces,
    sequence numbers, challenge tokens, phases).

    One object for all of them: each ``SystemRandom`` carries 2.5 KB of
    Mersenne Twister state that it never uses, and the protocol would make
    two per instance.  ``getrandbits`` (a 128-bit token per challenge) takes
    its bytes from ``os.urandom`` 4 KB at a time instead of one system call
    each: the same kernel CSPRNG bytes, each used once (under a lock; a
    forked child drops what its parent had read).  ``random()`` is
    SystemRandom's own.
    """

    _CHUNK = 4096

    def __init__(self):
        super().__init__()
        self._forget()
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self):
        self._lock = threading.Lock()
        self._buf = b""
        self._pos = 0

    def getrandbits(self, k):
        numbytes = (k + 7) // 8
        if not 0 < numbytes <= 64:
            return super().getrandbits(k)  # and its errors
        with self._lock:
            pos = self._pos
            if pos + numbytes > len(self._buf):
                self._buf = os.urandom(self._CHUNK)
                pos = 0
            self._pos = pos + numbytes
            chunk = self._buf[pos:pos + numbytes]
        # as SystemRandom: the top k bits of numbytes random bytes
        return int.from_bytes(chunk, "big") >> (numbytes * 8 - k)


#: The one source every instance's session uses.
SHARED = BufferedSystemRandom()
