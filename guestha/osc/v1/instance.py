# SPDX-License-Identifier: Apache-2.0
"""``openstack guestha instance list|show``: the instances guestha
monitors, with their state on their host."""

from osc_lib.command import command
from osc_lib import utils

from guestha.osc.v1 import pagination

#: The states of the API (doc/source/cli.rst says what each means).
STATES = ("registered", "monitored", "suspended", "faulted",
          "unregistered", "refused", "gone")

COLUMNS = ("id", "project_id", "host", "state", "open_faults",
           "updated_at")
HEADINGS = ("ID", "Project ID", "Host", "State", "Open Faults",
            "Updated At")
LONG_COLUMNS = COLUMNS + ("name", "interval_ms", "reason")
LONG_HEADINGS = HEADINGS + ("Name", "Interval (ms)", "Reason")


class ListInstance(command.Lister):
    """List the instances guestha monitors (an admin sees every
    project's, a project member their project's)."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "--host", metavar="<host>",
            help="Only the instances on this compute host")
        parser.add_argument(
            "--state", metavar="<state>",
            help="Only the instances in this state (%s)" % ", ".join(
                STATES))
        parser.add_argument(
            "--project", metavar="<project-id>",
            help="Only the instances of this project (ID)")
        parser.add_argument(
            "--long", action="store_true", default=False,
            help="Also list the Nova name, the heartbeat interval and "
                 "the reason of the state")
        pagination.add_arguments(parser, "instances")
        return parser

    def take_action(self, parsed_args):
        client = self.app.client_manager.guestha
        items = client.list(
            "instances",
            filters={"host": parsed_args.host,
                     "state": parsed_args.state,
                     "project_id": parsed_args.project},
            limit=parsed_args.limit, marker=parsed_args.marker)
        columns, headings = COLUMNS, HEADINGS
        if parsed_args.long:
            columns, headings = LONG_COLUMNS, LONG_HEADINGS
        return (headings,
                (utils.get_dict_properties(item, columns) for item in items))


class ShowInstance(command.ShowOne):
    """Show what guestha knows of one instance."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "instance", metavar="<instance-id>",
            help="The instance (Nova server ID)")
        return parser

    def take_action(self, parsed_args):
        client = self.app.client_manager.guestha
        item = client.show("instances", parsed_args.instance)
        return zip(*sorted(item.items()))
