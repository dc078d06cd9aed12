"""``python -m mnc_teach``: see mnc_teach/cli.py."""

import sys

from mnc_teach.cli import main

if __name__ == "__main__":
    sys.exit(main())
