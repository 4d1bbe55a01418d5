"""The runner's speed against the limit, a hand-written JAX loop of the same model: `python -m runner.bench`.

reference.py is the limit (the nets and the update written by hand), harness.py times the runner and the
limit and the runner's start-up, __main__.py is the command line.
"""
