"""A small checkout service: products, discount codes, orders, a (sandboxable) payment call."""
