"""A real MCP server (``mcp`` MCPServer) for the tool gateway tests and bench.

``python crm_mcp.py`` serves stdio; ``python crm_mcp.py --http PORT`` serves streamable HTTP
on 127.0.0.1:PORT/mcp. It records nothing: refunds answer with what they would have done.
"""

from __future__ import annotations

import sys

from mcp.server.mcpserver import MCPServer


def build() -> MCPServer:
    app = MCPServer("crm", log_level="WARNING")

    @app.tool()
    def read_customer(customer_id: str) -> dict[str, str]:
        """Read a customer record."""
        return {"id": customer_id, "name": "Ada Lovelace", "tier": "gold"}

    @app.tool()
    def issue_refund(customer_id: str, amount_cents: int) -> str:
        """Refund a customer, in integer cents."""
        return f"refunded {amount_cents} cents to {customer_id}"

    @app.tool()
    def echo(text: str, weight: float = 1.0) -> str:
        """Echo text back (weight is a JSON number, which Cedar cannot see)."""
        return text

    return app


if __name__ == "__main__":
    server = build()
    if len(sys.argv) > 2 and sys.argv[1] == "--http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]),
                   json_response=True, stateless_http=True)
    else:
        server.run()
