"""Prompt-injection firewall: signature rules, a semantic second layer, bans, allow-lists."""
