"""Thin command-line mains: parse config, set up logging, run."""
