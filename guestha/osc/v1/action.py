# SPDX-License-Identifier: Apache-2.0
"""``openstack guestha action list``: the corrective actions the
controllers took (or were refused by the cap), newest first."""

from osc_lib.command import command
from osc_lib import utils

from guestha.osc.v1 import pagination

COLUMNS = ("id", "instance_id", "fault_id", "action", "outcome", "server",
           "at")
HEADINGS = ("ID", "Instance ID", "Fault ID", "Action", "Outcome", "Server",
            "At")


class ListAction(command.Lister):
    """List corrective actions, newest first (an admin sees every
    project's, a project member their project's)."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "--instance", metavar="<instance-id>",
            help="Only the actions on this instance")
        parser.add_argument(
            "--fault", metavar="<fault-id>",
            help="Only the actions taken for this fault")
        pagination.add_arguments(parser, "actions")
        return parser

    def take_action(self, parsed_args):
        client = self.app.client_manager.guestha
        items = client.list(
            "actions", filters={"instance_id": parsed_args.instance,
                                "fault_id": parsed_args.fault},
            limit=parsed_args.limit, marker=parsed_args.marker)
        return (HEADINGS,
                (utils.get_dict_properties(item, COLUMNS) for item in items))
