#!/usr/bin/env python3
"""`make package`: a deployable CloudFormation (SAM) template for one stage and architecture.

    .venv/bin/python -m stack.package --stage dev --arch arm64 --out out/dev-arm64 [--target shop=1d ...]
        [--wal-target shop ...]

1. checks the IAM policy files are current (stack/policies.py);
2. writes the merge template (stack/template; what stack/build_template.py writes) to OUT/merge.json;
3. runs Chalice's packager (what `chalice package --pkg-format cloudformation --merge-template` runs)
   with two settings its command line lacks: `lambda_architecture` = ARCH, so deployment.zip holds the
   wheels for that architecture (config.json could only fix it per stage), and the stage's queue
   names (stack.template.app_model.queue_environment), so the SQS event sources name the stack's queues;
4. adds bytecode beside every Python source in deployment.zip (stack/bytecode.py: Lambda cannot keep any, so
   without it every cold start compiles the app and its dependencies);
5. copies the PostgreSQL client layer zip next to the template (sam.json refers to ./pg-clients-ARCH.zip).

OUT then holds sam.json, deployment.zip, pg-clients-ARCH.zip and merge.json: feed sam.json to
`aws cloudformation package` (uploads both zips) and `aws cloudformation deploy` (stack/README.md).

Chalice downloads the functions' dependency wheels for the Lambda platform from the package index,
or from a local wheelhouse (--wheelhouse DIR sets PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR; fill one with
`python -m stack.wheelhouse DIR`). It caches the result in .chalice/deployments/, so repackaging is
offline and quick.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from stack import policies  # noqa: E402
from stack.bytecode import add_bytecode  # noqa: E402
from stack.template import build  # noqa: E402
from stack.template.app_model import chalice_params  # noqa: E402
from stack.template.fargate import check_wal_targets  # noqa: E402
from stack.template.functions import ARCHES, layer_zip_name  # noqa: E402
from stack.template.targets import parse_targets  # noqa: E402


def chalice_package(stage: str, arch: str, out: Path, merge_template: Path) -> None:
    """Chalice's `package` command, plus the one parameter its command line lacks."""
    from chalice.cli.factory import CLIFactory
    from chalice.deploy.validate import validate_lambda_architecture

    factory = CLIFactory(project_dir=str(REPO), environ=os.environ)  # as the `chalice` command does
    config = factory.create_config_obj(chalice_stage_name=stage, user_provided_params=chalice_params(stage, arch))
    validate_lambda_architecture(config)
    options = factory.create_package_options()
    options.service_principal("lambda")  # fails fast without a region, before the dependency build
    packager = factory.create_app_packager(config, options, "cloudformation", "json", str(merge_template))
    packager.package_app(config, str(out), stage)


EXIT_NO_WHEELS = 3  # tests/stack skips on this: the dependency wheels could not be fetched
CACHE_KEEP = 2  # Chalice's dependency builds kept per architecture (it never removes any; ~26 MB each)


def prune_dependency_cache(directory: Path = REPO / ".chalice" / "deployments", keep: int = CACHE_KEEP) -> None:
    """Chalice caches a build per hash of requirements.txt *and the app's code*: one more 26 MB zip for
    every code change. Keep the newest few per architecture."""
    if not directory.is_dir():
        return
    by_arch: dict[str, list[Path]] = {}
    for zip_path in directory.glob("*.zip"):
        by_arch.setdefault("arm64" if zip_path.stem.endswith("-arm64") else "x86_64", []).append(zip_path)
    for paths in by_arch.values():
        for old in sorted(paths, key=lambda p: p.stat().st_mtime, reverse=True)[keep:]:
            old.unlink(missing_ok=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", required=True)
    parser.add_argument("--arch", required=True, choices=ARCHES)
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--layer-zip", type=Path, help="default: layers/dist/pg-clients-ARCH.zip")
    parser.add_argument(
        "--no-layer-zip",
        action="store_true",
        help="do not copy the layer zip (the template still refers to it: for tests and linting)",
    )
    parser.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="NAME=INTERVAL[:snapshot]",
        help="a dead-man's switch alarm for this target (repeatable), e.g. shop=1d, db=1d:snapshot",
    )
    parser.add_argument("--targets", type=Path, help='JSON list of {"name": ..., "interval": "1d", "kind": ...}')
    parser.add_argument(
        "--wal-target",
        action="append",
        default=[],
        metavar="NAME",
        help="an ECS service streaming this target's WAL (`lifeboat wal-stream NAME`; repeatable; needs"
        " FargateImageUri and SubnetIds at deploy time), with its role and alarms",
    )
    parser.add_argument("--settings", type=Path, help="settings JSON whose retention policies become lifecycle rules")
    parser.add_argument(
        "--wheelhouse", type=Path, help="package offline from this directory of wheels (python -m stack.wheelhouse DIR)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.wheelhouse:
        if not args.wheelhouse.is_dir():
            parser.error(f"--wheelhouse {args.wheelhouse}: no such directory (fill it: python -m stack.wheelhouse DIR)")
        os.environ.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(args.wheelhouse.resolve()))

    if policies.main(["--check"]) != 0:
        return 1
    layer_zip = args.layer_zip or REPO / "layers" / "dist" / layer_zip_name(args.arch)
    if not args.no_layer_zip and not layer_zip.is_file():
        parser.error(f"{layer_zip} does not exist: build it with `make layers LAYER_ARCH={args.arch}`")
    try:
        watched = parse_targets(args.target, args.targets)
        wal_targets = check_wal_targets(args.wal_target)
    except (ValueError, KeyError, OSError) as exc:
        parser.error(str(exc))

    started = time.monotonic()
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    merge = out / "merge.json"
    template = build(args.stage, args.arch, watched, args.settings, wal_targets)
    merge.write_text(json.dumps(template, indent=2) + "\n")
    from botocore.exceptions import NoRegionError
    from chalice.deploy.packager import MissingDependencyError, NoSuchPackageError

    try:
        chalice_package(args.stage, args.arch, out, merge)
    except NoRegionError:
        print(
            "package: no AWS region configured (export AWS_DEFAULT_REGION or set one in ~/.aws/config):"
            " Chalice derives the partition's service principals from it",
            file=sys.stderr,
        )
        return 2
    except (NoSuchPackageError, MissingDependencyError) as exc:
        print(
            f"package: cannot fetch the functions' dependency wheels for {args.arch}: {exc}\n"
            "  reach the package index, or package offline with --wheelhouse DIR (python -m stack.wheelhouse DIR)",
            file=sys.stderr,
        )
        return EXIT_NO_WHEELS
    prune_dependency_cache()
    compiled = add_bytecode(out / "deployment.zip")
    if not args.no_layer_zip:
        shutil.copyfile(layer_zip, out / layer_zip_name(args.arch))
    rel = out.relative_to(REPO) if out.is_relative_to(REPO) else out
    print(
        f"packaged {args.stage} for {args.arch} in {time.monotonic() - started:.1f} s: {rel}/sam.json"
        f" (deployment.zip with bytecode for {compiled} modules)\n"
        f"next: aws cloudformation package --template-file {rel}/sam.json --s3-bucket ARTIFACT_BUCKET"
        f" --output-template-file {rel}/packaged.yaml\n"
        f"      aws cloudformation deploy --template-file {rel}/packaged.yaml --stack-name pg-lifeboat-{args.stage}"
        " --capabilities CAPABILITY_IAM CAPABILITY_AUTO_EXPAND --parameter-overrides SubnetIds=... ..."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
