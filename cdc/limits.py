"""Limits on what an event may carry: checked where it is written, so nothing downstream has to refuse it.

Lengths count characters (code points), as pydantic's `max_length` does; a character is at most 4 bytes of
UTF-8. The request models of the services use the same names, so a request is refused before its event would be.
"""

from __future__ import annotations

#: Longest identifier an event may carry (aggregate, product, order, customer, user, payment ids, tracking
#: numbers). Ids are MongoDB `_id`s and Postgres primary keys, the Kafka key and Neo4j/Cassandra keys: 200
#: characters are at most 800 bytes, under MongoDB's classic 1,024-byte index key limit and Postgres' ~2,700-byte
#: B-tree entry limit, and far above any id the services make (UUIDs: 36).
MAX_ID_LENGTH = 200
#: Longest name (a product's name): a title, not a description.
MAX_NAME_LENGTH = 500
#: Longest carrier name (DHL, UPS, "La Poste Colissimo" …).
MAX_CARRIER_LENGTH = 100
#: Longest URL (page views' url and referrer): the de-facto limit browsers and CDNs keep to.
MAX_URL_LENGTH = 2000
#: Longest free text an event may carry (cancel and refund reasons).
MAX_TEXT_LENGTH = 2000
#: Currency codes are ISO 4217: three capital letters.
CURRENCY_PATTERN = r"^[A-Z]{3}$"
#: Largest stock level: the stock view keeps it in a Postgres `integer`, so a larger one could never be applied.
MAX_STOCK = 2**31 - 1
