# SPDX-License-Identifier: Apache-2.0
"""What the ledger's database raises when it is away reaches the callers
as "try again": the agent's call, the Masakari sink's cap."""

from oslo_db import exception as db_exc
import pytest

from guestha.sinks import base
from tests.unit.server.conftest import clock  # noqa: F401
from tests.unit.server.conftest import ledger  # noqa: F401
from tests.unit.server.test_recovery_cap import ledger_sinks  # noqa: F401
from tests.unit.server.test_recovery_cap import masakari_with_cap
from tests.unit.server.test_recovery_cap import unhealthy


class DatabaseAway(object):
    window = max_actions = 1

    def take(self, *args, **kwargs):
        raise db_exc.DBConnectionError("lost connection to MySQL server")


def test_masakari_sink_retries_while_the_database_is_away(
        ledger):  # noqa: F811
    sink = masakari_with_cap(ledger)
    sink.recovery_cap = DatabaseAway()
    with pytest.raises(base.SinkUnavailable):
        sink.send(unhealthy())
    assert sink._adapter.posts == []


def test_report_events_fails_whole_when_the_database_is_away(tmp_path):
    import oslo_messaging

    from guestha.server import endpoint as endpoint_mod
    from guestha.server.ledger import Ledger
    from tests.unit.server import test_endpoint as fakes

    own = Ledger(str(tmp_path / "l.sqlite"), "ctl-a", sinks=("log",))
    own.register()
    dispatched = fakes.Recorder()
    endpoint = endpoint_mod.ControllerEndpoint(
        own, dispatched, fakes.FakeGroups())

    def away(conn, batch):
        raise db_exc.DBConnectionError("(2013, 'Lost connection')")

    own._store = away
    batch = [fakes.fault(), fakes.fault()]
    with pytest.raises(oslo_messaging.ExpectedException) as info:
        endpoint.report_events({}, "compute-1", batch)
    assert isinstance(info.value.exc_info[1],
                      endpoint_mod.LedgerUnavailable)
    assert dispatched == [] and own.counts() == {}
    del own._store  # the database is back; the agent sends again
    answer = endpoint.report_events({}, "compute-1", batch)
    assert answer == {"accepted": [e["id"] for e in batch], "rejected": {}}


def test_a_controller_needs_neither_libvirt_nor_vitrageclient():
    """The extras compute and vitrage (setup.cfg): a controller's code
    imports neither."""
    import subprocess
    import sys
    code = ("import sys\n"
            "sys.modules['libvirt'] = None\n"
            "sys.modules['vitrageclient'] = None\n"
            "import guestha.cmd.manage, guestha.cmd.server\n"
            "import guestha.server.service, guestha.sinks.masakari\n"
            "import guestha.sinks.log\n")
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", code],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
