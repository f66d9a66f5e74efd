"""``python -m guestha_guest``: run the guest daemon."""

import sys

from guestha_guest.cmd import main

sys.exit(main())
