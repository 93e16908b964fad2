"""Project memory: scanning a directory, chunking files, populating the store, re-embedding it."""
