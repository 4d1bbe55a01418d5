"""`python -m runner.report`: see runner/report/tables.py."""

import sys

from runner.report.tables import main

if __name__ == "__main__":
    sys.exit(main())
