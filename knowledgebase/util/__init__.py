"""Small helpers with no knowledgebase dependencies: redaction, lexical text, path globs, paths, processes,
JSON values, private folders and logs."""
