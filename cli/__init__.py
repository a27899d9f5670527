"""The cdcflow command line and the wiring of every layer beneath it (the top of the import graph)."""
