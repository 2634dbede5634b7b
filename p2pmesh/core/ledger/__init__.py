"""The credit ledger: per-author signed hash chains, paired payments, fork proofs (PROTOCOL §9)."""
