"""The inbox: idempotent consumers for the services that read what the relay publishes.

Every record the relay publishes carries an ``event_id`` header. A consumer claims that
id in its own database, in the same transaction as the changes the record causes; a
second delivery of the same event finds the claim and is dropped::

    from relay.inbox import Inbox

    inbox = Inbox(consumer="billing")
    with conn.transaction():
        if inbox.claim(conn, event_id):
            apply(conn, record)

The tables come from ``outbox-relay inbox migrate`` (or `relay.inbox.alembic`).
"""

from __future__ import annotations

from relay.inbox.claim import Claim, Inbox, event_id_of

__all__ = ["Claim", "Inbox", "event_id_of"]
