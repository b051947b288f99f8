"""The pure rules: validation, the engine and the per-bucket kernel (frames in, frames out)."""
