"""SQL placeholders of the inbox tables (filled through psycopg.sql, never as text)."""

from __future__ import annotations

from psycopg import sql


def identifiers(schema: str, table: str) -> dict[str, sql.Composable]:
    """The placeholders of the inbox SQL and migrations, for the inbox ``schema.table``."""

    def own(suffix: str) -> sql.Identifier:
        return sql.Identifier(f"{table}_{suffix}")

    return {
        "schema": sql.Identifier(schema),
        "inbox": sql.Identifier(schema, table),
        "parked": sql.Identifier(schema, f"{table}_parked"),
        "migrations": sql.Identifier(schema, f"{table}_migrations"),
        "processed_index": own("processed_at"),
        "consumer_processed_index": own("consumer_processed_at"),
        "parked_state_known": own("parked_state_known"),
        "parked_open_index": own("parked_open"),
    }
