# SPDX-License-Identifier: Apache-2.0
"""Vitrage datasource plugins shipped with guestha.

This package is loaded by Vitrage, inside Vitrage's own processes, never
by guestha: nothing else in guestha imports it, and guestha does not need
Vitrage installed.  Vitrage finds a datasource named ``NAME`` in
``[datasources] types`` by importing ``<path>.NAME`` for each package of
``[datasources] path``, so this package is a *path* and the datasource is
its sub-package :mod:`guestha.vitrage_datasource.guestha`::

    [datasources]
    types = nova.host,nova.instance,static,guestha
    path = vitrage.datasources,guestha.vitrage_datasource

Only ``guestha/__init__.py`` (which imports nothing) and this package are
imported from guestha, so installing guestha with ``pip install
--no-deps`` into Vitrage's environment is enough.  See
doc/source/sinks.rst and etc/vitrage/.
"""
