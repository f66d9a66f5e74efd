# SPDX-License-Identifier: Apache-2.0
"""``openstack guestha instance list|show``: the instances guestha
monitors, with their state on their host."""

from guestha.osc.v1 import base

#: The states of the API (doc/source/cli.rst says what each means).
STATES = ("registered", "monitored", "suspended", "faulted",
          "unregistered", "refused", "gone")


class ListInstance(base.CollectionLister):
    """List the instances guestha monitors (an admin sees every
    project's, a project member their project's)."""

    collection = "instances"
    columns = ("id", "project_id", "host", "state", "open_faults",
               "updated_at")
    headings = ("ID", "Project ID", "Host", "State", "Open Faults",
                "Updated At")
    long_columns = ("name", "interval_ms", "reason")
    long_headings = ("Name", "Interval (ms)", "Reason")
    long_help = ("Also list the Nova name, the heartbeat interval and "
                 "the reason of the state")

    def add_filters(self, parser):
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

    def filters(self, parsed_args):
        return {"host": parsed_args.host, "state": parsed_args.state,
                "project_id": parsed_args.project}


class ShowInstance(base.ItemShow):
    """Show what guestha knows of one instance."""

    collection = "instances"
    metavar = "<instance-id>"
    id_help = "The instance (Nova server ID)"
