"""`python -m cdc` runs the cdcflow command line."""

from cdc.cli import main

main()
