"""The command line's jobs: the checks before any job runs, one run, its replicas, a multirun's end."""
