# SPDX-License-Identifier: Apache-2.0
# Sphinx configuration for guestha's release notes.
#
# reno's Sphinx extension collects the notes in releasenotes/notes/ from
# the git history.  Build with `tox -e releasenotes` (sphinx-build -W -b
# html releasenotes/source releasenotes/build/html).

project = 'guestha Release Notes'
copyright = 'guestha contributors'
author = 'guestha contributors'

extensions = ['reno.sphinxext']

source_suffix = '.rst'
master_doc = 'index'
exclude_patterns = []
pygments_style = 'sphinx'

html_theme = 'alabaster'
html_static_path = []
