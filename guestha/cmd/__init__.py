# SPDX-License-Identifier: Apache-2.0
"""Thin command-line mains: parse config, set up logging, run."""
