# SPDX-License-Identifier: Apache-2.0
"""The casts of the agent's RPC API (guestha.rpc.api.ControllerAPI) that
the relay sends, recorded in order; ``cast_error`` makes every cast raise
it."""


class CastRecorder(object):
    def __init__(self):
        self.casts = []        # (method, kwargs), in the order cast
        self.cast_error = None

    def _cast(self, method, kwargs):
        if self.cast_error is not None:
            raise self.cast_error
        self.casts.append((method, kwargs))

    def relay_broadcast(self, **kwargs):
        self._cast("relay_broadcast", kwargs)

    def query_status(self, **kwargs):
        self._cast("query_status", kwargs)

    def agent_alive(self, **kwargs):
        self._cast("agent_alive", kwargs)
