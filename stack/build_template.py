#!/usr/bin/env python3
"""Write the CloudFormation template merged into Chalice's by `chalice package --merge-template`.

    .venv/bin/python -m stack.build_template --stage dev --arch arm64 --out out/dev-arm64/merge.json \\
        [--target shop=1d --target billing=6h | --targets targets.json] [--settings settings.json] \\
        [--resources-only]

Chalice generates the functions, their roles (from .chalice/policy-<stage>-<function>.json) and their
event sources; this template adds what the product needs around them (bucket, key, jobs table, queues,
alarms, the PostgreSQL client layer) and patches the generated functions. With --resources-only it is a
standalone stack of everything but the functions and the layer, for `chalice deploy`.

The template is built by the package stack/template (its modules and design decisions: stack/template/__init__.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from stack.template import build  # noqa: E402
from stack.template.functions import ARCHES  # noqa: E402
from stack.template.targets import parse_targets  # noqa: E402

__all__ = ["build", "main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", required=True)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--arch", choices=ARCHES, help="merge template for `chalice package` on this architecture")
    mode.add_argument(
        "--resources-only",
        action="store_true",
        help="a standalone template without functions and layer (for `chalice deploy`)",
    )
    parser.add_argument("--out", type=Path, required=True, help="file to write ('-': stdout)")
    parser.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="NAME=INTERVAL[:snapshot]",
        help="add a dead-man's switch for a target backed up every INTERVAL (e.g. shop=1d,"
        " db=1d:snapshot for its snapshots)",
    )
    parser.add_argument("--targets", type=Path, help='JSON list of {"name": ..., "interval": "1d", "kind": ...}')
    parser.add_argument(
        "--settings", type=Path, help="settings JSON: lifecycle rules for all its retention policies and its prefix"
    )
    args = parser.parse_args(argv)
    try:
        watched = parse_targets(args.target, args.targets)
    except (ValueError, KeyError, OSError) as exc:
        parser.error(str(exc))
    template = build(args.stage, None if args.resources_only else args.arch, watched, args.settings)
    text = json.dumps(template, indent=2) + "\n"
    if str(args.out) == "-":
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
