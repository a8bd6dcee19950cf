"""`python -m chalicelib.cli ...`: `lifeboat` where its entry point is not installed (e.g. a restore_command).

No wal-fetch fast path here: `-m` imports the package `chalicelib.cli` (every command) before this module runs. The
console script (`lifeboat`, chalicelib.pitr.fastfetch) serves a spool hit without it; so does `python -m
chalicelib.pitr.fastfetch ...`, which takes the same arguments as `lifeboat`.
"""

import sys

from chalicelib.cli import main

sys.exit(main())
