"""`python -m cli` runs the cdcflow command line."""

from cli.main import main

main()
