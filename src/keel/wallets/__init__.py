"""Budget-bound agent wallets: encrypted keys, a double-entry ledger in integer micro-USD,
budgets with atomic reservations, and the hooks policy and approval capabilities plug into."""
