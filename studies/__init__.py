"""Reproduction studies and built-in example configs (examples/*.toml)."""
