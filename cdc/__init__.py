"""cdcflow core: the event, the outbox writer, the change-stream tailer, settings and logging."""
