# SPDX-License-Identifier: Apache-2.0
"""What guestha-agent's process imports: no green DNS resolver.

guestha/agent/service.py imports the reporter (and so oslo.messaging and
eventlet) with EVENTLET_NO_GREENDNS=yes; that works only if nothing the
agent imports before it pulls oslo.messaging in, which the event records
once did (they lived in guestha.rpc.api).
"""

import os
import subprocess
import sys

CODE = ("import sys, guestha.agent.service; "
        "print(sorted(m for m in ('dns', 'cryptography') "
        "if m in sys.modules))")


def test_the_agent_loads_no_green_dns_resolver():
    env = dict(os.environ)
    env.pop("EVENTLET_NO_GREENDNS", None)
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", CODE],
                         check=True, capture_output=True, text=True,
                         env=env).stdout
    assert out.strip() == "[]"


def test_the_agent_imports_no_oslo_messaging_before_the_reporter():
    code = ("import sys, guestha.agent.loop, guestha.agent.instance; "
            "print('oslo_messaging' in sys.modules)")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code],
                         check=True, capture_output=True,
                         text=True).stdout
    assert out.strip() == "False"
