"""The Gemini CLI adapters: hook entry, warm process, hook handlers, MCP server, settings, runner."""
