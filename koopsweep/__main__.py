"""``python -m koopsweep``: the same command line as the ``koopsweep`` script."""

from koopsweep.cli import main

main()
