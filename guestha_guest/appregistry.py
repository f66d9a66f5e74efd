# SPDX-License-Identifier: Apache-2.0
"""The applications registered for health checks, and their health.

A registered *critical* application makes the guest unhealthy when its
last report says so, when it has not reported within its deadline of
being asked, or when it disconnected without unregistering (until it
registers again under the same name).  The deadline runs from the first
check sent after the application's last report (or its registration), so
an application is never "stopped answering" for a period in which nobody
asked it anything (before the host's first challenge, while the host was
away).
"""

import logging

from guestha_guest.apprequests import clean
from guestha_guest.apprequests import RequestError

LOG = logging.getLogger(__name__)


class AppRegistry(object):
    """Registered names, their deadlines and last reports, and the
    critical applications that left without unregistering.

    :param max_departed: the most departed applications remembered (the
        oldest is forgotten first).
    """

    def __init__(self, max_departed):
        self._max_departed = max_departed
        self.by_name = {}     # registered name -> AppClient
        self.departed = {}    # name -> time a critical app left unregistered

    def clear(self):
        self.by_name.clear()
        self.departed.clear()

    def register(self, client, name, deadline_ms, critical, now):
        """Register ``client`` as ``name`` (again, or under a new name).

        :raises RequestError: ``name_in_use``.
        """
        other = self.by_name.get(name)
        if other is not None and other is not client:
            raise RequestError("name_in_use", "another connection has "
                               "registered '%s'" % name)
        if client.name is not None and client.name != name:
            # registering under a new name replaces the old registration
            del self.by_name[client.name]
        client.name = name
        client.critical = critical
        client.deadline_s = deadline_ms / 1000.0
        client.report_at = now
        client.asked_at = None
        client.healthy = True
        client.reason = None
        self.by_name[name] = client
        if self.departed.pop(name, None) is not None:
            LOG.info("%s registered again", client)
        else:
            LOG.info("%s registered (deadline %d ms, %s)", client,
                     deadline_ms, "critical" if critical else "not critical")

    def report(self, client, healthy, reason, now):
        """``client`` reports its health.

        :raises RequestError: ``not_registered``.
        """
        if client.name is None:
            raise RequestError("not_registered", "register before reporting "
                               "health")
        reason = clean(reason) if reason else None
        if healthy != client.healthy or reason != client.reason:
            if healthy:
                LOG.info("%s reports healthy", client)
            else:
                LOG.info("%s reports unhealthy: %s", client, reason)
        client.healthy = healthy
        client.reason = None if healthy else reason
        client.report_at = now
        client.asked_at = None

    def unregister(self, client):
        if client.name is not None:
            LOG.info("%s unregistered", client)
            del self.by_name[client.name]
            client.name = None

    def left(self, client, now):
        """``client`` disconnected: a critical one still registered counts
        as departed, unhealthy until it registers again."""
        if client.name is None:
            return
        self.by_name.pop(client.name, None)
        if client.critical:
            if len(self.departed) >= self._max_departed:
                # bounded: an application that registers under ever new
                # names and leaves must not grow this without end
                oldest = next(iter(self.departed))
                del self.departed[oldest]
                LOG.warning("forgetting departed app %s: too many "
                            "departed apps", oldest)
            self.departed[client.name] = now

    def ask(self, now):
        """A check is being sent to every registered application: their
        deadlines run from now unless one already does.  Returns them."""
        clients = list(self.by_name.values())
        for client in clients:
            if client.asked_at is None:
                client.asked_at = now
        return clients

    def health(self, now):
        """``(healthy, reason)`` of the registered critical applications."""
        problems = []
        for name, client in self.by_name.items():
            if not client.critical:
                continue
            if not client.healthy:
                problems.append((name, "app %s: %s" % (
                    name, client.reason or "unhealthy")))
            elif (client.asked_at is not None
                  and now - client.asked_at > client.deadline_s):
                problems.append((name, "app %s stopped answering (%d ms)" % (
                    name, round((now - client.report_at) * 1000))))
        for name in self.departed:
            problems.append((name, "app %s disconnected" % name))
        if not problems:
            return True, None
        problems.sort()
        return False, "; ".join(reason for _name, reason in problems)

    def counts(self):
        """How many are registered, critical and departed."""
        return {
            "registered": len(self.by_name),
            "critical": sum(1 for c in self.by_name.values() if c.critical),
            "departed": len(self.departed),
        }
