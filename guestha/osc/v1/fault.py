# SPDX-License-Identifier: Apache-2.0
"""``openstack guestha fault list|show``: the faults guestha detected,
open and recovered, newest first."""

from guestha.osc.v1 import base


class ListFault(base.CollectionLister):
    """List faults, newest first (an admin sees every project's, a
    project member their project's)."""

    collection = "faults"
    columns = ("id", "instance_id", "host", "kind", "open", "detected_at",
               "recovered_at")
    headings = ("ID", "Instance ID", "Host", "Kind", "Open", "Detected At",
                "Recovered At")
    long_columns = ("project_id", "action", "reason")
    long_headings = ("Project ID", "Action", "Reason")
    long_help = "Also list the project, recommended action and reason"

    def add_filters(self, parser):
        parser.add_argument(
            "--instance", metavar="<instance-id>",
            help="Only the faults of this instance")
        parser.add_argument(
            "--host", metavar="<host>",
            help="Only the faults detected on this compute host")
        state = parser.add_mutually_exclusive_group()
        state.add_argument(
            "--open", dest="open", action="store_true", default=None,
            help="Only the open faults (not recovered yet)")
        state.add_argument(
            "--closed", dest="open", action="store_false",
            help="Only the faults the instance recovered from")
        parser.add_argument(
            "--kind", metavar="<kind>",
            help="Only the faults of this kind (e.g. missed, unhealthy)")

    def filters(self, parsed_args):
        is_open = parsed_args.open
        return {"instance_id": parsed_args.instance,
                "host": parsed_args.host,
                "open": None if is_open is None else (
                    "true" if is_open else "false"),
                "kind": parsed_args.kind}


class ShowFault(base.ItemShow):
    """Show one fault."""

    collection = "faults"
    metavar = "<fault-id>"
    id_help = "The fault (its event ID)"
