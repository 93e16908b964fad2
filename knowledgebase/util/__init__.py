"""Small helpers with no knowledgebase dependencies: redaction, lexical text, path globs, processes, JSON values."""
