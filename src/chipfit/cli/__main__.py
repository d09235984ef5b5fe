"""``python -m chipfit.cli``: the command line."""

from chipfit.cli import main

main()
