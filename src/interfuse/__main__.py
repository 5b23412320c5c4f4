"""``python -m interfuse`` runs the command line."""

from interfuse.cli import main

main()
