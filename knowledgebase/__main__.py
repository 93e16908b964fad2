"""``python -m knowledgebase`` is ``kb``."""

from knowledgebase.cli import main

main()
