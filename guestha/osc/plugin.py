# SPDX-License-Identifier: Apache-2.0
"""The openstack CLI plugin of guestha (``openstack guestha ...``).

python-openstackclient finds this module through the entry point
``openstack.cli.extension = guestha = guestha.osc.plugin``, reads
:data:`API_NAME`, :data:`API_VERSION_OPTION` and :data:`API_VERSIONS`,
adds :func:`build_option_parser`'s options to its own, loads the
commands of ``openstack.guestha.v<version>`` and, the first time a
command asks for ``client_manager.guestha``, calls :func:`make_client`.
"""

import importlib
import logging

from osc_lib import exceptions
from osc_lib import utils

LOG = logging.getLogger(__name__)

API_NAME = "guestha"
API_VERSION_OPTION = "os_guestha_api_version"
DEFAULT_API_VERSION = "1"
#: API major version -> client class.
API_VERSIONS = {
    "1": "guestha.osc.client.Client",
}


def make_client(instance):
    """The guestha client of an osc ClientManager ``instance``."""
    version = str(instance._api_version[API_NAME])
    major = version.split(".")[0]
    if major not in API_VERSIONS:
        raise exceptions.UnsupportedVersion(
            "guestha API version %s is not supported; supported: %s" % (
                version, ", ".join(sorted(API_VERSIONS))))
    module, _, name = API_VERSIONS[major].rpartition(".")
    client_class = getattr(importlib.import_module(module), name)
    # openstacksdk's config has the --os-* options of build_option_parser
    # without their "os_" prefix
    config = instance._cli_options.config
    LOG.debug("guestha client: API %s, URL override %s", version,
              config.get("guestha_url"))
    return client_class(
        session=instance.session,
        endpoint_override=config.get("guestha_url"),
        region_name=instance.region_name,
        interface=instance.interface,
        noauth_roles=config.get("guestha_roles"),
        noauth_project_id=config.get("guestha_project_id"),
        timeout=config.get("api_timeout"))


def build_option_parser(parser):
    """Add guestha's global options to the openstack CLI's parser."""
    parser.add_argument(
        "--os-guestha-api-version",
        metavar="<guestha-api-version>",
        default=utils.env("OS_GUESTHA_API_VERSION",
                          default=DEFAULT_API_VERSION),
        help="guestha API version, default=%s (Env: "
             "OS_GUESTHA_API_VERSION)" % DEFAULT_API_VERSION)
    parser.add_argument(
        "--os-guestha-url",
        metavar="<url>",
        default=utils.env("OS_GUESTHA_URL"),
        help="URL of the guestha API (e.g. http://controller:9749/), "
             "instead of the service catalog's guestha endpoint; needed "
             "with --os-auth-type none (Env: OS_GUESTHA_URL)")
    parser.add_argument(
        "--os-guestha-roles",
        metavar="<role>[,<role>]",
        default=utils.env("OS_GUESTHA_ROLES", default="admin"),
        help="With --os-auth-type none only (an API with auth_strategy "
             "= noauth): the roles to claim, default=admin (Env: "
             "OS_GUESTHA_ROLES)")
    parser.add_argument(
        "--os-guestha-project-id",
        metavar="<project-id>",
        default=utils.env("OS_GUESTHA_PROJECT_ID"),
        help="With --os-auth-type none only: the project to claim "
             "(Env: OS_GUESTHA_PROJECT_ID)")
    return parser
