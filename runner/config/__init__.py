"""Composing a config and checking its values, before anything heavy is imported (no JAX)."""
