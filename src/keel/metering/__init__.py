"""Metering: tokens, latency and cost per request; the batched request log; metrics."""
