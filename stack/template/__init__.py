"""The CloudFormation template merged into Chalice's by `chalice package --merge-template`
(`python -m stack.build_template`, `make package`).

Chalice generates the functions, their roles (from .chalice/policy-<stage>-<function>.json) and their
event sources; this template adds what the product needs around them (bucket, key, jobs table, queues,
alarms, the PostgreSQL client layer) and patches the generated functions. Chalice merges it as a deep
dict merge, so a patch names only the keys it sets (functions.py).

The functions are read from the app itself, so a function added to app.py is patched without editing
the stack; it only needs its line in stack/policies.py ACCESS (app_model.py).

Modules, each with the design decisions it carries in its docstring:
* intrinsics.py  Ref, Fn::Sub, Fn::GetAtt, Fn::If as JSON; Chalice's logical ids
* app_model.py   the app's functions and queues as `chalice package` reads them; the SQS queue names;
                 everything the template takes from chalicelib
* parameters.py  parameters and conditions;  outputs.py  outputs
* storage.py     bucket, KMS key, lifecycle rules from chalicelib's retention, jobs table
* vault.py       the optional replication to a bucket in another account (condition HasVault)
* queues.py      queues and dead-letter queues
* targets.py     the targets given per-target dead-man's switches (--target, --targets)
* monitoring.py  alarm topic and alarms;  dashboard.py  the CloudWatch dashboard (SEARCH over targets)
* functions.py   patches of Chalice's functions and roles (layer, VPC, names, environment), log groups
* fargate.py     the optional ECS Fargate worker and WAL stream services (condition HasFargate)
"""

from __future__ import annotations

from pathlib import Path

from stack import policies
from stack.template.app_model import load_app
from stack.template.fargate import check_wal_targets, fargate_resources
from stack.template.functions import ARCHES, function_resources
from stack.template.intrinsics import Json
from stack.template.monitoring import monitoring_resources
from stack.template.outputs import outputs
from stack.template.parameters import conditions, parameters, stage_rules
from stack.template.queues import queue_resources
from stack.template.storage import lifecycle, storage_resources
from stack.template.targets import WatchedTarget

__all__ = ["build"]


def build(
    stage: str,
    arch: str | None,
    watched: list[WatchedTarget] | None = None,
    settings_file: Path | None = None,
    wal_targets: list[str] | None = None,
) -> Json:
    """The merge template (arch given) or, with arch None, a standalone stack of everything but the
    functions and the layer (for `chalice deploy`). `wal_targets`: one WAL stream service each (fargate.py)."""
    wal_targets = check_wal_targets(wal_targets or []) if arch is not None else []
    if arch is not None and arch not in ARCHES:
        raise ValueError(f"arch {arch!r}: use one of {', '.join(ARCHES)}")
    model = load_app(stage)
    problems = policies.wiring_problems(policies.load_chalice_config(), stage, [f.name for f in model.functions])
    if problems:
        raise SystemExit("build_template: IAM policies are not in place:\n  " + "\n  ".join(problems))
    rules, retention = lifecycle(settings_file)
    resources = {
        **storage_resources(rules, settings_file),
        **queue_resources(model),
        **monitoring_resources(model, watched or [], wal_targets),
        **function_resources(model, arch),
    }
    if arch is not None:
        resources.update(fargate_resources(model, arch, wal_targets))
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": f"pg-lifeboat ({stage}): PostgreSQL backups to S3"
        + ("" if arch else " - storage, queues and alarms for `chalice deploy`"),
        "Parameters": parameters(stage, retention, arch is not None),
        "Rules": stage_rules(stage),
        "Conditions": conditions(arch is not None),
        "Resources": resources,
        "Outputs": outputs(stage, arch),
    }
