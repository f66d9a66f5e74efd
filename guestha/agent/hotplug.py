# SPDX-License-Identifier: Apache-2.0
"""Whether to hot-plug the guestha channel into a running domain.

Nova has no hook to add a device to the domains it defines, so the agent
adds the channel itself, live, when the instance's flavor asks for guestha,
and again after every (re)start (a live device does not survive a
restart).  The flavor's extra specs come from the domain itself: Nova
writes them into the domain's metadata (``<nova:extraSpecs>``, see
:func:`guestha.agent.domain.parse_domain`), so a compute host needs no
Nova credentials.  Only for a domain of an older Nova, which writes no
extra specs there, is Nova's API asked (:mod:`guestha.nova`), and
only if ``[nova]`` has credentials.  This module only decides; the loop
calls :meth:`HotplugPolicy.decide` in a worker thread (Nova is HTTP) and
hands an ``attach`` to the libvirt watcher, which does it and reports
whether the domain had the virtio-serial controller the channel needs.

The host-side socket is ``<socket_dir>/<instance uuid>.sock``: one per
instance, named so that an operator finds it, and stable across agent
restarts so that a restarted agent finds the channels it plugged.
"""

import os

from guestha import nova as nova_mod

#: The longest path a UNIX socket may have on Linux: ``sun_path`` holds 108
#: bytes, the last one the terminating NUL.  QEMU cannot bind a longer one.
MAX_SOCKET_PATH = 107

_UUID_LEN = 36
_SUFFIX = ".sock"


def socket_path(socket_dir, instance_uuid):
    """The host-side socket of an instance's hot-plugged channel."""
    return os.path.join(socket_dir, instance_uuid + _SUFFIX)


class HotplugPolicy(object):
    """Decides, per domain, whether the agent adds the guestha channel.

    :param nova: asks Nova for the flavor's settings of a domain whose XML
        has none (:meth:`guestha.nova.NovaClient.guestha_features`),
        or None when the agent has no Nova credentials.
    :param socket_dir: where the channels' host-side sockets go
        (``[agent] socket_dir``).
    :raises ValueError: ``socket_dir`` is too long for a UNIX socket path
        of an instance uuid under it.
    """

    def __init__(self, nova, socket_dir):
        longest = len(os.fsencode(socket_path(socket_dir, "x" * _UUID_LEN)))
        if longest > MAX_SOCKET_PATH:
            raise ValueError(
                "socket_dir %r is too long: a channel socket under it "
                "(<uuid>.sock) would have %d bytes, and a UNIX socket path "
                "may have at most %d; choose a directory of at most %d "
                "bytes" % (socket_dir, longest, MAX_SOCKET_PATH,
                           MAX_SOCKET_PATH - len(_SUFFIX) - _UUID_LEN - 1))
        self.nova = nova
        self.socket_dir = socket_dir

    def decide(self, info):
        """What to do about a running domain without the guestha channel.

        :param info: the domain (:class:`guestha.agent.events.DomainInfo`).
        :returns: ``("attach", socket path)`` or ``("skip", reason)``, the
            reason being a sentence for the instance's status and logs.
        :raises guestha.nova.NovaUnavailable: Nova did not answer;
            the caller asks again later.
        """
        if info.channel_path:
            return ("skip", "the domain already has the guestha channel "
                            "(%s)" % info.channel_path)
        if not info.nova:
            # a domain Nova did not define (no Nova metadata in its XML):
            # no flavor to ask, and not ours to change
            return ("skip", "not a Nova instance (no Nova metadata in the "
                            "domain XML)")
        features = self.features(info)
        if features is None:
            return ("skip", "Nova wrote no flavor extra specs into the "
                            "domain XML (an older Nova) and [nova] has no "
                            "credentials to ask its API")
        if not (features["heartbeat"] or features["server_group_messaging"]):
            return ("skip", "flavor %s does not enable guestha (neither "
                            "guestha:heartbeat nor "
                            "guestha:server_group_messaging is true)"
                    % info.nova.get("flavor", "?"))
        path = socket_path(self.socket_dir, info.uuid)
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            # only a non-standard uuid gets here: the constructor checked
            # the length for a canonical one
            return ("skip", "channel socket path %s is longer than the %d "
                            "bytes a UNIX socket path may have"
                    % (path, MAX_SOCKET_PATH))
        return ("attach", path)

    def features(self, info):
        """What the flavor of a Nova instance asks of guestha
        (:func:`guestha.nova.features_from_extra_specs`).

        :returns: the settings, or None when the domain XML has no extra
            specs and there is no Nova client to ask.
        :raises guestha.nova.NovaUnavailable: Nova was asked and did
            not answer.
        """
        extra_specs = info.nova.get("extra_specs")
        if extra_specs is not None:
            return nova_mod.features_from_extra_specs(extra_specs)
        if self.nova is None:
            return None
        return self.nova.guestha_features(info.uuid)
