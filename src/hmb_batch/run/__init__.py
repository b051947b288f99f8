"""Running a batch: inputs and identity, member buckets within a memory budget, orchestration."""
