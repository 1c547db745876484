"""Runs: one run end to end (runner), sweep specs executed and resumed (sweep), and where their
groups execute (executors: local worker processes or Ray). Writes through records only."""
