# SPDX-License-Identifier: Apache-2.0
"""oslo.messaging plumbing shared by the compute agent and the controller.

The methods, their arguments and their versions are in
:mod:`guestha.rpc.api`; this module only names the topics and namespaces,
builds targets and a transport, and says which exceptions mean "the
message bus is unwell, try again later".

The transport is built on the global ``cfg.CONF``, never on a private
``cfg.ConfigOpts()``: oslo.messaging registers some options it reads on
every call and cast (``[oslo_messaging_metrics]``,
``[oslo_messaging_tracing]``) on the global object only, and a private one
makes call/cast fail with ``NoSuchOptError``.
"""

import oslo_messaging

try:
    import kombu.exceptions
except ImportError:  # another driver than rabbit; kombu comes with it
    kombu = None

#: Agents call and cast to the controllers on this topic; any controller
#: may answer (several run at once for scale and availability).
CONTROLLER_TOPIC = "guestha-controller"
#: Each agent listens on this topic with ``server=<its host>``.
AGENT_TOPIC = "guestha-agent"

#: Endpoint namespaces, so a guestha method can never be dispatched to an
#: endpoint of another API that happens to share the exchange.
CONTROLLER_NAMESPACE = "guestha.controller"
AGENT_NAMESPACE = "guestha.agent"

#: The version of both APIs (see the table in :mod:`guestha.rpc.api`).
RPC_API_VERSION = "1.0"

#: What a client may raise when the broker or the peer is unavailable, as
#: measured against RabbitMQ with the rabbit (kombu) driver:
#:
#: * ``MessageDeliveryFailure``: the broker is down and ``retry`` publish
#:   attempts are used up;
#: * ``MessagingTimeout``: no answer to a call in time (no controller, or
#:   the reply was lost while the broker restarted);
#: * ``kombu.exceptions.OperationalError`` (not wrapped by oslo.messaging):
#:   a cast or call that needs a NEW connection from the pool while the
#:   broker refuses connections;
#: * ``RemoteError`` (a ``MessagingException``): the peer raised.
#:
#: ``OSError`` covers socket errors that escape the driver.
TRANSIENT_ERRORS = (oslo_messaging.MessagingException, OSError)
if kombu is not None:
    TRANSIENT_ERRORS += (kombu.exceptions.KombuError,)


def get_transport(conf, url=None):
    """The RPC transport for ``conf`` (pass ``cfg.CONF``).

    ``url`` overrides ``[DEFAULT] transport_url`` (tests use ``fake://``
    or a throw-away vhost).
    """
    return oslo_messaging.get_rpc_transport(conf, url=url)


def controller_target(version=RPC_API_VERSION):
    """Client-side target of the controllers (any one of them answers)."""
    return oslo_messaging.Target(topic=CONTROLLER_TOPIC,
                                 namespace=CONTROLLER_NAMESPACE,
                                 version=version)


def controller_server_target(server):
    """Server-side target of one controller process."""
    return oslo_messaging.Target(topic=CONTROLLER_TOPIC, server=server)


def agent_target(host, version=RPC_API_VERSION):
    """Client-side target of the agent of compute host ``host``."""
    return oslo_messaging.Target(topic=AGENT_TOPIC, server=host,
                                 namespace=AGENT_NAMESPACE, version=version)


def agent_server_target(host):
    """Server-side target of the agent of ``host``."""
    return oslo_messaging.Target(topic=AGENT_TOPIC, server=host)


def endpoint_target(namespace):
    """The ``target`` attribute of an endpoint object in ``namespace``."""
    return oslo_messaging.Target(namespace=namespace,
                                 version=RPC_API_VERSION)
