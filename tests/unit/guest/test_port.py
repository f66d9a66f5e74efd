# SPDX-License-Identifier: Apache-2.0
"""The port's output buffer: bounded, whole lines, the latest sync kept."""

import pytest

from guestha_guest import port as port_mod


class FakeDevice(port_mod.DevicePort):
    """A DevicePort whose writes go to a list; ``accept`` says how many
    bytes the next write takes (0: EAGAIN)."""

    def __init__(self):
        super().__init__("/nonexistent", None, None, None)
        self.fd = 99  # "open"; no selector, so no registration
        self.accept = 0
        self.wire = bytearray()

    def _write_some(self, data):
        if not self.accept:
            raise BlockingIOError()
        n = min(self.accept, len(data))
        self.wire += data[:n]
        self.accept = 0
        return n

    def drain(self):
        self.accept = 1 << 30
        self._flush()


def sync(n):
    return b'\n{"type":"sync","n":%d}\n' % n


def test_only_the_latest_sync_not_yet_begun_is_kept():
    port = FakeDevice()
    assert port.write(b"answer-1\n")
    for n in range(100):  # hours without a host, retrying
        assert port.write(sync(n), sync=True)
    assert port.write(b"answer-2\n")
    port.drain()
    assert bytes(port.wire) == b"answer-1\n" + sync(99) + b"answer-2\n"


def test_a_sync_is_never_dropped_for_lack_of_room():
    port = FakeDevice()
    line = b"b" * 9 + b"\n"
    while port.write(line):
        pass
    assert port.dropped == 1  # drop-newest for ordinary lines
    assert port.pending() + len(sync(1)) > port_mod.MAX_OUTBUF
    assert port.write(sync(1), sync=True)
    port.drain()
    # what was queued before the sync and not begun made room for it
    assert bytes(port.wire) == sync(1)


def test_a_line_begun_is_finished_before_a_sync_replaces_anything():
    port = FakeDevice()
    port.write(b"first line\n")
    port.write(sync(1), sync=True)
    port.accept = 4  # "firs" went out
    port._flush()
    line = b"c" * 9 + b"\n"
    while port.write(line):
        pass
    assert port.write(b"d" * 40 + b"\n") is False  # full
    assert port.write(sync(2), sync=True)
    port.drain()
    wire = bytes(port.wire)
    assert wire.startswith(b"first line\n")
    assert wire.endswith(sync(2)) and sync(1) not in wire


@pytest.mark.parametrize("begun", [1, len(sync(1)) - 1])
def test_a_sync_begun_is_not_replaced(begun):
    port = FakeDevice()
    port.write(sync(1), sync=True)
    port.accept = begun
    port._flush()
    port.write(sync(2), sync=True)
    port.drain()
    assert bytes(port.wire) == sync(1) + sync(2)
