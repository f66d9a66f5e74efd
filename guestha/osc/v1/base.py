# SPDX-License-Identifier: Apache-2.0
"""What every ``openstack guestha`` command shares: a list of one of the
API's collections (filters, ``--long``, pagination) and the show of one
item of it.  A command names its collection and columns and adds its own
filters."""

from osc_lib.command import command
from osc_lib import utils

from guestha.osc.v1 import pagination


class CollectionLister(command.Lister):
    """``list`` of :attr:`collection` (``instances``, ``faults``,
    ``actions``), newest or in the API's order, followed page by page."""

    collection = None
    columns = ()
    headings = ()
    #: Extra columns shown with ``--long`` (no ``--long`` if empty).
    long_columns = ()
    long_headings = ()
    long_help = None

    def add_filters(self, parser):
        """Add the command's own filter options to ``parser``."""

    def filters(self, parsed_args):
        """The API's query parameters from the filter options (None for
        an option not given)."""
        return {}

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        self.add_filters(parser)
        if self.long_columns:
            parser.add_argument(
                "--long", action="store_true", default=False,
                help=self.long_help)
        pagination.add_arguments(parser, self.collection)
        return parser

    def take_action(self, parsed_args):
        client = self.app.client_manager.guestha
        items = client.list(self.collection,
                            filters=self.filters(parsed_args),
                            limit=parsed_args.limit,
                            marker=parsed_args.marker)
        columns, headings = self.columns, self.headings
        if getattr(parsed_args, "long", False):
            columns = columns + self.long_columns
            headings = headings + self.long_headings
        return (headings,
                (utils.get_dict_properties(item, columns) for item in items))


class ItemShow(command.ShowOne):
    """``show`` of one item of :attr:`collection`, by its ID, every field
    in name order."""

    collection = None
    metavar = None
    id_help = None

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument("id", metavar=self.metavar, help=self.id_help)
        return parser

    def take_action(self, parsed_args):
        client = self.app.client_manager.guestha
        item = client.show(self.collection, parsed_args.id)
        return zip(*sorted(item.items()))
