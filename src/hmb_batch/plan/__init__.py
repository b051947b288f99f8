"""Plans as data: authored editions (TOML), their validation, and their compiled form."""
