"""knowledgebase: shared memory for coding agents on PostgreSQL + pgvector.

The library is the product; the ``kb`` CLI, the Gemini CLI hooks, the MCP server, the scripts and
the notebooks are thin adapters over it. Importing this package is cheap: heavy dependencies
(torch, sentence-transformers, alembic) load only when used.
"""

__version__ = "0.1.0"
