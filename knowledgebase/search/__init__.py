"""Retrieval: ranked search over chunks, facts and commands, and context blocks within a budget."""
