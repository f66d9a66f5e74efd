# SPDX-License-Identifier: Apache-2.0
"""The ``--limit`` and ``--marker`` options every list command shares.

Without ``--limit`` a command lists everything, following the API's
``next`` markers; with it, one page of at most that many, after
``--marker`` (the last ID of the page before).
"""

import argparse


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            "%r is not a positive integer" % text)
    return value


def add_arguments(parser, what):
    parser.add_argument(
        "--limit", metavar="<num>", type=positive_int,
        help="List at most <num> %s (one page); without it, all of "
             "them" % what)
    parser.add_argument(
        "--marker", metavar="<id>",
        help="List the %s after the one with this ID (the last one "
             "of the page before)" % what)
