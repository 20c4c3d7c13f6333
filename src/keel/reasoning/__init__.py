"""Scatter-gather reasoning: many cheap samples, one judge, tournaments for large N."""
