# SPDX-License-Identifier: Apache-2.0
"""The committed sample config matches what the code generates.

Options are defined in guestha/conf/; etc/guestha/guestha.conf.sample is
generated from them (and from the oslo.log and oslo.messaging options, at
the versions pinned in upper-constraints.txt).  A change to an option
without regenerating the sample fails here.
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
GENERATOR_CONF = os.path.join(
    ROOT, 'etc', 'guestha', 'guestha-config-generator.conf')
SAMPLE = os.path.join(ROOT, 'etc', 'guestha', 'guestha.conf.sample')


def test_sample_config_is_up_to_date(tmp_path):
    generated = tmp_path / 'guestha.conf.sample'
    # A separate process: the generator imports oslo.messaging (and with it
    # eventlet), which the tests themselves should not load by accident.
    result = subprocess.run(
        [sys.executable, '-W', 'ignore', '-m', 'oslo_config.generator',
         '--config-file', GENERATOR_CONF, '--output-file', str(generated)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        universal_newlines=True)
    assert result.returncode == 0, (
        'oslo-config-generator failed (is guestha installed, e.g. by '
        'tools/setup.sh?):\n%s' % result.stdout)

    with open(SAMPLE, encoding='utf-8') as f:
        committed = f.read()
    assert generated.read_text(encoding='utf-8') == committed, (
        '%s is out of date with the options in the code: run '
        '`tox -e genconfig` (or `.venv/bin/oslo-config-generator '
        '--config-file etc/guestha/guestha-config-generator.conf`) and '
        'commit the result' % os.path.relpath(SAMPLE, ROOT))


def test_list_opts_merges_groups_of_several_modules():
    from oslo_config import cfg

    from guestha.conf import opts

    class Module:
        def __init__(self, opts):
            self._opts = opts

        def list_opts(self):
            return self._opts

    a = cfg.StrOpt('a')
    b = cfg.IntOpt('b')
    c = cfg.BoolOpt('c')
    agent = cfg.OptGroup('agent', help='The compute agent.')
    merged = opts.list_opts([
        Module({'agent': [a]}),
        Module([(agent, [b])]),
        Module({'DEFAULT': [c]}),
    ])

    assert merged == [(agent, [a, b]), ('DEFAULT', [c])]
