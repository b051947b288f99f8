"""Analysts' runs: a scenario under other rules, a sweep of one parameter, a comparison."""
