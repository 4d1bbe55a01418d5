"""`python -m runner.report PATH...`: the command; what it does is runner/report/tables.py's `main`."""

import sys

from runner.report.tables import main

sys.exit(main())
