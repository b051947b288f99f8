"""The year-to-date ledger (DuckDB): schema, store, archive of output files, writer lock."""
