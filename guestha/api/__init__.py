# SPDX-License-Identifier: Apache-2.0
"""guestha-api: the REST API of the controllers (:mod:`guestha.api.app`).
"""
