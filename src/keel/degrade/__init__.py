"""Graceful degradation: a spend/traffic circuit breaker over a ladder of cheaper pipelines."""
