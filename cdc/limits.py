"""Limits on what an event may carry: checked where it is written, so nothing downstream has to refuse it."""

from __future__ import annotations

#: Longest identifier an event may carry (aggregate, product, order, customer, user and payment ids).
MAX_ID_LENGTH = 200
#: Longest free text an event may carry (names, reasons, carriers, tracking numbers).
MAX_TEXT_LENGTH = 2000
