"""``python -m chipfit``: the command line."""

from chipfit.cli import main

main()
