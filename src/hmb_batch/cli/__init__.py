"""The command line (typer): thin commands over run/, ledger/ and report/."""
