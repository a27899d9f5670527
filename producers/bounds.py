"""Numeric bounds of the services' request fields, so that nothing a request asks for overflows later: MongoDB
stores 64-bit integers, and the order events carry amounts of at most 12 digits (2 after the point). String
limits and the stock limit are the events' own, in `cdc/limits.py`."""

from __future__ import annotations

from decimal import Decimal

#: Most units one purchase or one order line may ask for.
MAX_QUANTITY = 1_000_000
#: Largest amount (a price, an order total) the order events can carry: 12 digits, 2 of them decimals.
MAX_AMOUNT = Decimal("9999999999.99")
#: How far in the future a client's page-view time may be (clock skew); later ones are refused.
MAX_CLOCK_SKEW_SECONDS = 24 * 3600
