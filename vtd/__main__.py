"`python -m vtd ...` is the `vtd` command (`python -m vtd train --help`)."
# Written by hand, not exported: nbdev 2.4 writes a module whole only from a notebook's `#| default_exp`, and its
# `#| export <module>` appends cells to an existing file on every export (so a second export would duplicate them).
import sys

from vtd.cli import main

if __name__ == '__main__': sys.exit(main())
