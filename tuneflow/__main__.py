"""``python -m tuneflow``: the same CLI as the ``tuneflow`` command."""

from tuneflow.cli import main

main()
