"""Reusing nets: transfer from a finished run, pretraining, a finished run read back."""
