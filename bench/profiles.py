"""`make bench BENCH_ARGS=--profile`: pyinstrument around a backup and a restore, py-spy over a whole
backup process (all threads, with native frames), and pyinstrument of the cold start."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bench.proc import log, run_timed

if TYPE_CHECKING:
    from bench.sections import Sections


def run(bench: Sections) -> None:  # long because each profiler's command line is spelled out
    """pyinstrument around a backup and a restore of the largest dumps, py-spy over a whole backup
    process (all threads, with native frames), and pyinstrument of the cold start."""
    pdir = bench.opts.workdir / "profiles"
    pdir.mkdir(exist_ok=True)
    for ds in bench.opts.datasets()[1:]:  # not the fixed-cost one
        log(f"profile backup {ds.name}")
        bench.worker(
            "backup",
            "--target",
            ds.name,
            "--slot",
            bench.next_slot(),
            "--profile",
            str(pdir / f"backup-{ds.name}.txt"),
        )
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy:
        for ds in bench.opts.datasets()[1:]:  # not the fixed-cost one
            log(f"py-spy backup {ds.name}")
            run_timed(
                [
                    spy,
                    "record",
                    "--threads",
                    "--idle",
                    "--rate",
                    "250",
                    "--format",
                    "raw",
                    "--output",
                    str(pdir / f"pyspy-backup-{ds.name}.txt"),
                    "--",
                    sys.executable,
                    "-m",
                    "bench.worker",
                    "backup",
                    "--target",
                    ds.name,
                    "--slot",
                    bench.next_slot(),
                ],
                bench.env_for(bench.opts.transports[0]),
            )
    ds = bench.opts.datasets()[-1]
    db = "restored_profile"
    for jobs in ("1", str(bench.opts.jobs)):
        log(f"profile restore {ds.name} jobs={jobs}")
        bench.worker(
            "restore",
            "--backup-id",
            bench.backups[ds.name][0]["backup_id"],
            "--database",
            db,
            "--jobs",
            jobs,
            "--workdir",
            str(bench.opts.workdir),
            "--profile",
            str(pdir / f"restore-{ds.name}-j{jobs}.txt"),
        )
        bench.psql(f'DROP DATABASE "{db}" WITH (FORCE)')
    code = "import app; from chalicelib import wiring; wiring.backup_services()"
    run_timed(
        [sys.executable, "-m", "pyinstrument", "--no-color", "--outfile", str(pdir / "coldstart.txt"), "-c", code],
        bench.env_for(bench.opts.transports[0]),
    )
    log(f"profiles in {pdir}")
