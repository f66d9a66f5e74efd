# SPDX-License-Identifier: Apache-2.0
"""The cloud harness: a real single-node OpenStack for guestha's tests.

See tools/cloud.sh and doc/source/testing.rst.
"""
