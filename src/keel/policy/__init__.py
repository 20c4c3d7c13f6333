"""Cedar policies for tool calls: schema, authorizer, versioned store, drafting, shadow."""
