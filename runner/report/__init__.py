"""`python -m runner.report`: tables of runs, groups over seeds and their statistics, plots."""
