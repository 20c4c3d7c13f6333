"""The OpenAI-compatible HTTP gateway: routes, request pipeline, auth and error mapping."""
