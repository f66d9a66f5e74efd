# SPDX-License-Identifier: Apache-2.0
"""Support code shared by the tests (not part of guestha)."""
