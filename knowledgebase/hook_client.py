"""Old path of the hook entry, still named in settings.json files written before 0.1.0's layout: keep it."""
from knowledgebase.gemini.hook_client import main

if __name__ == "__main__":
    main()
