"""`python -m chalicelib.cli ...`: `lifeboat` where its entry point is not installed (e.g. a restore_command)."""

import sys

from chalicelib.cli import main

sys.exit(main())
