"""API keys: created by the CLI, stored hashed, resolved to a tenant/agent principal."""
