# SPDX-License-Identifier: Apache-2.0
"""``openstack guestha action list``: the corrective actions the
controllers took (or were refused by the cap), newest first."""

from guestha.osc.v1 import base


class ListAction(base.CollectionLister):
    """List corrective actions, newest first (an admin sees every
    project's, a project member their project's)."""

    collection = "actions"
    columns = ("id", "instance_id", "fault_id", "action", "outcome",
               "server", "at")
    headings = ("ID", "Instance ID", "Fault ID", "Action", "Outcome",
                "Server", "At")

    def add_filters(self, parser):
        parser.add_argument(
            "--instance", metavar="<instance-id>",
            help="Only the actions on this instance")
        parser.add_argument(
            "--fault", metavar="<fault-id>",
            help="Only the actions taken for this fault")

    def filters(self, parsed_args):
        return {"instance_id": parsed_args.instance,
                "fault_id": parsed_args.fault}
