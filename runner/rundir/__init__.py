"""The run dir: its claim and lock, its files (written atomically), the records read back, resuming."""
