# SPDX-License-Identifier: Apache-2.0
"""``openstack guestha fault list|show``: the faults guestha detected,
open and recovered, newest first."""

from osc_lib.command import command
from osc_lib import utils

from guestha.osc.v1 import pagination

COLUMNS = ("id", "instance_id", "host", "kind", "open", "detected_at",
           "recovered_at")
HEADINGS = ("ID", "Instance ID", "Host", "Kind", "Open", "Detected At",
            "Recovered At")
LONG_COLUMNS = COLUMNS + ("project_id", "action", "reason")
LONG_HEADINGS = HEADINGS + ("Project ID", "Action", "Reason")


class ListFault(command.Lister):
    """List faults, newest first (an admin sees every project's, a
    project member their project's)."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
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
        parser.add_argument(
            "--long", action="store_true", default=False,
            help="Also list the project, recommended action and reason")
        pagination.add_arguments(parser, "faults")
        return parser

    def take_action(self, parsed_args):
        client = self.app.client_manager.guestha
        is_open = parsed_args.open
        items = client.list(
            "faults",
            filters={"instance_id": parsed_args.instance,
                     "host": parsed_args.host,
                     "open": None if is_open is None else (
                         "true" if is_open else "false"),
                     "kind": parsed_args.kind},
            limit=parsed_args.limit, marker=parsed_args.marker)
        columns, headings = COLUMNS, HEADINGS
        if parsed_args.long:
            columns, headings = LONG_COLUMNS, LONG_HEADINGS
        return (headings,
                (utils.get_dict_properties(item, columns) for item in items))


class ShowFault(command.ShowOne):
    """Show one fault."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "fault", metavar="<fault-id>",
            help="The fault (its event ID)")
        return parser

    def take_action(self, parsed_args):
        client = self.app.client_manager.guestha
        item = client.show("faults", parsed_args.fault)
        return zip(*sorted(item.items()))
