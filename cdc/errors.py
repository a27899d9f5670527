"""Errors of the cdc package: the event, the outbox and the tailer."""

from __future__ import annotations


class CdcError(Exception):
    """Base class of every cdc error."""


class InvalidEventError(CdcError):
    """An event failed validation (bad field, oversized, not JSON-serialisable)."""


class EventTooLargeError(InvalidEventError):
    """An event's encoded size is over the configured limit."""


class ConfigurationError(CdcError):
    """A setting is missing or wrong; the message says which and what to do."""
