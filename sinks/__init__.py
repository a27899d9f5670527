"""cdcflow: sinks."""
