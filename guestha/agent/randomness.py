# SPDX-License-Identifier: Apache-2.0
"""The agent's source of randomness for the protocol: one
``SystemRandom`` (:data:`SHARED`) for every instance's connection and
heartbeat.

One object for all of them: each ``SystemRandom`` carries 2.5 KB of
Mersenne Twister state that it never uses, and the protocol would make two
per instance.  Each draw is a ``getrandom`` system call (the kernel's
CSPRNG).  A challenge's 128-bit token is ``randbytes(16)``: one call of
about 0.8 us on the benchmark machines, where reading ``os.urandom`` 4 KB
at a time and handing out each byte once, under a lock, cost 3-4 us in
Python (doc/source/benchmarks.rst, issue 10).
"""

import random

#: The one source every instance's session uses.
SHARED = random.SystemRandom()
