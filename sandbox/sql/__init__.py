"""The policy gate: small passes over the sqlglot tree.

parse -> allowlist -> resolve -> analyse -> rewrite passes -> privacy plan.
Each pass lives in its own module; ``sandbox.gate`` is the one driver.
"""
