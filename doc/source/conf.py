# SPDX-License-Identifier: Apache-2.0
# Sphinx configuration for the guestha documentation.
#
# Plain Sphinx with its default theme: no extension or theme that needs the
# network or anything beyond doc/requirements.txt.  Build with
# `tox -e docs` (sphinx-build -W -b html doc/source doc/build/html).

project = 'guestha'
copyright = 'guestha contributors'
author = 'guestha contributors'

extensions = []

source_suffix = '.rst'
master_doc = 'index'
exclude_patterns = []
pygments_style = 'sphinx'

html_theme = 'alabaster'
html_static_path = []
