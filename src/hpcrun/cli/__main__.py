"""``python -m hpcrun.cli``: the same as the ``hpcrun`` command."""

from . import main

main()
