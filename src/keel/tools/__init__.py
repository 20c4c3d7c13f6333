"""Agent tool gateway: registry of MCP/HTTP tools, /mcp and /v1/tools, decision log."""
