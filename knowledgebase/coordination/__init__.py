"""Agents working together: the audit trail, the task queue, the API key pool, the spool, kb exec."""
