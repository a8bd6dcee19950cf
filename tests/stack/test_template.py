"""The packaged CloudFormation template: lint-clean, and the security and wiring properties we promise."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stack import capabilities, names, policies
from tests.stack.conftest import REPO, Packaged

CFN_LINT = Path(sys.executable).parent / "cfn-lint"
# cfn-lint rules ignored, each with its reason. None so far: warnings are tolerated, errors are not.
CFN_LINT_IGNORED: dict[str, str] = {}


def cfn_lint(template: Path) -> list[dict[str, Any]]:
    cmd = [str(CFN_LINT), "--format", "json"]
    for rule in CFN_LINT_IGNORED:
        cmd += ["--ignore-checks", rule]
    proc = subprocess.run([*cmd, str(template)], capture_output=True, text=True, timeout=120, check=False)
    assert proc.stdout.strip(), f"cfn-lint printed nothing (rc {proc.returncode}): {proc.stderr[-2000:]}"
    matches: list[dict[str, Any]] = json.loads(proc.stdout)
    return matches


def errors_of(matches: list[dict[str, Any]]) -> list[str]:
    return [
        f"{m['Rule']['Id']} {m['Message']} at {'/'.join(map(str, m['Location']['Path']))}"
        for m in matches
        if m["Level"] == "Error"
    ]


def statements(node: Any) -> Iterator[dict[str, Any]]:
    """Every IAM statement anywhere in a template or policy document (both branches of a Fn::If)."""
    if isinstance(node, dict):
        if "Statement" in node:
            found = node["Statement"]
            for item in found if isinstance(found, list) else [found]:
                yield from _unwrap(item)
        for value in node.values():
            yield from statements(value)
    elif isinstance(node, list):
        for value in node:
            yield from statements(value)


def _unwrap(item: Any) -> Iterator[dict[str, Any]]:
    if isinstance(item, dict) and "Fn::If" in item:
        for branch in item["Fn::If"][1:]:
            yield from _unwrap(branch)
    elif isinstance(item, dict) and item != {"Ref": "AWS::NoValue"}:
        yield item


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def policy_files() -> list[Path]:
    return sorted((REPO / ".chalice").glob("policy-*.json"))


def functions(p: Packaged) -> dict[str, dict[str, Any]]:
    return p.of_type("AWS::Serverless::Function")


def chalice_name(function: dict[str, Any]) -> str:
    """The Chalice function name, from the FunctionName the stack gives it."""
    sub = function["Properties"]["FunctionName"]["Fn::Sub"]
    rest = sub.removeprefix(f"{names.APP}-${{Stage}}")
    return rest.removeprefix("-") or "api_handler"


def resolve_stage(value: Any, stage: str) -> str:
    text = value["Fn::Sub"] if isinstance(value, dict) else value
    return str(text).replace("${Stage}", stage)


# --- lint -----------------------------------------------------------------------------------------


def test_packaged_template_passes_cfn_lint(packaged: Packaged) -> None:
    errors = errors_of(cfn_lint(packaged.directory / "sam.json"))
    assert not errors, "cfn-lint errors:\n" + "\n".join(errors)


def test_resources_only_template_passes_cfn_lint(resources_only: Path) -> None:
    template = json.loads(resources_only.read_text())
    assert not [r for r in template["Resources"].values() if r["Type"].startswith("AWS::Serverless::")]
    errors = errors_of(cfn_lint(resources_only))
    assert not errors, "cfn-lint errors:\n" + "\n".join(errors)


def test_packaging_time_is_reported(packaged: Packaged) -> None:
    # Not a limit: a cold dependency build takes ~15 s per architecture from the index. Shown with -rA.
    print(f"packaged {packaged.variant} in {packaged.seconds:.1f} s")
    assert (packaged.directory / "deployment.zip").stat().st_size > 1_000_000


# --- the bucket -----------------------------------------------------------------------------------


def test_every_bucket_blocks_public_access(packaged: Packaged) -> None:
    buckets = packaged.of_type("AWS::S3::Bucket")
    assert buckets
    for name, bucket in buckets.items():
        block = bucket["Properties"]["PublicAccessBlockConfiguration"]
        flags = ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets")
        assert all(block.get(flag) is True for flag in flags), f"{name}: {block}"


def test_every_bucket_encrypts_with_kms_and_keeps_versions(packaged: Packaged) -> None:
    for name, bucket in packaged.of_type("AWS::S3::Bucket").items():
        props = bucket["Properties"]
        rules = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert all(r["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms" for r in rules), name
        key = rules[0]["ServerSideEncryptionByDefault"]["KMSMasterKeyID"]
        assert key == {"Fn::If": ["CreateKmsKey", {"Fn::GetAtt": ["BackupKey", "Arn"]}, {"Ref": "KmsKeyArn"}]}
        assert props["VersioningConfiguration"] == {"Status": "Enabled"}
        assert bucket["DeletionPolicy"] == "Retain", "deleting the stack must never delete backups"
    assert packaged.resources["BackupKey"]["Properties"]["EnableKeyRotation"] is True
    assert packaged.resources["BackupKey"]["DeletionPolicy"] == "Retain"


def test_object_lock_follows_its_parameter(packaged: Packaged) -> None:
    props = packaged.resources["BackupBucket"]["Properties"]
    assert props["ObjectLockEnabled"]["Fn::If"][0] == "HasObjectLock"
    assert props["ObjectLockConfiguration"]["Fn::If"][0] == "HasObjectLock"
    assert packaged.template["Parameters"]["ObjectLockMode"]["Default"] == "GOVERNANCE"  # on by default


def test_every_bucket_policy_denies_insecure_transport(packaged: Packaged) -> None:
    buckets = set(packaged.of_type("AWS::S3::Bucket"))
    covered = set()
    for policy in packaged.of_type("AWS::S3::BucketPolicy").values():
        props = policy["Properties"]
        for st in statements(props["PolicyDocument"]):
            if (
                st["Effect"] == "Deny"
                and st.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") in ("false", False)
                and st["Principal"] == "*"
            ):
                assert set(as_list(st["Action"])) & {"s3:*", "*"}
                covered.add(props["Bucket"]["Ref"])
    assert covered == buckets


def test_lifecycle_rules_expire_by_retention_tag(packaged: Packaged) -> None:
    from chalicelib.config import RetentionPolicy
    from chalicelib.scheduling.retention import POLICY_TAG, RETENTION_TAG, class_days

    rules = packaged.resources["BackupBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    params = packaged.template["Parameters"]
    expected = class_days(RetentionPolicy())
    for cls, days in expected.items():
        tagged = [r for r in rules if {"Key": RETENTION_TAG, "Value": cls.value} in r.get("TagFilters", [])]
        assert len(tagged) == 1, f"one rule for {RETENTION_TAG}={cls.value}"
        rule = tagged[0]
        assert {"Key": POLICY_TAG, "Value": "default"} in rule["TagFilters"]
        assert rule["Status"] == "Enabled"
        param = rule["ExpirationInDays"]["Ref"]
        assert params[param]["Default"] == days, f"{param} defaults to lifecycle_rules' own days"
    aborts = [r["AbortIncompleteMultipartUpload"] for r in rules if "AbortIncompleteMultipartUpload" in r]
    assert aborts == [{"DaysAfterInitiation": 1}]
    assert all(r["Status"] == "Enabled" for r in rules)


def test_glacier_transition_is_off_by_default(packaged: Packaged) -> None:
    params = packaged.template["Parameters"]
    assert params["GlacierTransitionDays"]["Default"] == 0
    rules = packaged.resources["BackupBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    transitions = [r["Transitions"] for r in rules if "Transitions" in r]
    assert transitions and all(t["Fn::If"][0] == "HasGlacierTransition" for t in transitions)


# --- queues and table -----------------------------------------------------------------------------


def test_every_queue_has_a_dead_letter_queue(packaged: Packaged) -> None:
    queues = packaged.of_type("AWS::SQS::Queue")
    targets = {
        q["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
        for q in queues.values()
        if "RedrivePolicy" in q["Properties"]
    }
    sources = [name for name in queues if name not in targets]
    assert {"BackupQueue", "RestoreQueue"} <= set(sources)
    for name in sources:
        redrive = queues[name]["Properties"].get("RedrivePolicy")
        assert redrive, f"{name} has no RedrivePolicy"
        assert redrive["maxReceiveCount"] == 3
        assert redrive["deadLetterTargetArn"]["Fn::GetAtt"][0] in queues
    for name, queue in queues.items():
        assert queue["Properties"]["SqsManagedSseEnabled"] is True, name
    dlq_retention = {queues[t]["Properties"]["MessageRetentionPeriod"] for t in targets}
    assert min(dlq_retention) > max(queues[s]["Properties"]["MessageRetentionPeriod"] for s in sources)


def test_sqs_workers_consume_the_stacks_queues_with_enough_visibility(packaged: Packaged) -> None:
    """Chalice names the queue in the event source ARN; the stack must create a queue of that name
    whose visibility timeout covers the function's timeout, and create it before the function."""
    stage = packaged.variant.stage
    queues = {
        resolve_stage(q["Properties"]["QueueName"], stage): name
        for name, q in packaged.of_type("AWS::SQS::Queue").items()
    }
    consumers = 0
    for fname, fn in functions(packaged).items():
        for event in fn["Properties"].get("Events", {}).values():
            if event["Type"] != "SQS":
                continue
            consumers += 1
            arn = event["Properties"]["Queue"]["Fn::Sub"]
            queue_name = arn.rsplit(":", 1)[1]
            assert queue_name in queues, f"{fname} consumes {queue_name}, which the stack does not create"
            queue = packaged.resources[queues[queue_name]]
            assert queue["Properties"]["VisibilityTimeout"] >= fn["Properties"]["Timeout"], fname
            assert {"Ref": queues[queue_name]} in fn["Properties"]["Environment"]["Variables"].values(), (
                f"{fname} must reference {queues[queue_name]} so the queue exists before its event source"
            )
    assert consumers >= 2  # backup_worker and restore_worker


def test_jobs_table(packaged: Packaged) -> None:
    props = packaged.resources["JobsTable"]["Properties"]
    assert resolve_stage(props["TableName"], packaged.variant.stage) == names.jobs_table(packaged.variant.stage)
    assert props["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True


# --- functions ------------------------------------------------------------------------------------


def test_every_function_has_the_layer_for_its_architecture(packaged: Packaged) -> None:
    layer = packaged.resources["PgClientsLayer"]
    assert layer["Type"] == "AWS::Serverless::LayerVersion"
    props = layer["Properties"]
    assert props["ContentUri"] == f"./pg-clients-{packaged.variant.arch}.zip"
    assert props["CompatibleArchitectures"] == [packaged.variant.arch]
    fns = functions(packaged)
    assert {"Dispatcher", "BackupWorker"} <= set(fns)
    for name, fn in fns.items():
        assert {"Ref": "PgClientsLayer"} in fn["Properties"].get("Layers", []), f"{name} lacks the layer"
        assert fn["Properties"]["Architectures"] == [packaged.variant.arch], name
        assert fn["Properties"]["Runtime"] in props["CompatibleRuntimes"], name


def test_every_function_is_wired_to_the_stack(packaged: Packaged) -> None:
    for name, fn in functions(packaged).items():
        props = fn["Properties"]
        env = props["Environment"]["Variables"]
        assert env["LIFEBOAT_JOBS_TABLE"] == {"Ref": "JobsTable"}, name
        assert env["LIFEBOAT_BACKUP_QUEUE_URL"] == {"Ref": "BackupQueue"}, name
        assert env["LIFEBOAT_RESTORE_QUEUE_URL"] == {"Ref": "RestoreQueue"}, name
        assert env["LIFEBOAT_CONFIG"] == f"ssm:{names.config_path(packaged.variant.stage)}", name
        assert props["VpcConfig"]["Fn::If"][0] == "HasVpc", name
        assert props["VpcConfig"]["Fn::If"][1] == {
            "SubnetIds": {"Ref": "SubnetIds"},
            "SecurityGroupIds": {"Ref": "SecurityGroupIds"},
        }
        assert f"{name}LogGroup" in fn["DependsOn"], name
        log_group = packaged.resources[f"{name}LogGroup"]["Properties"]["LogGroupName"]
        assert resolve_stage(log_group, packaged.variant.stage) == names.log_group(
            packaged.variant.stage, chalice_name(fn)
        )


def test_every_role_carries_its_functions_own_policy_file(packaged: Packaged) -> None:
    stage = packaged.variant.stage
    for name, fn in functions(packaged).items():
        function = chalice_name(fn)
        role = packaged.resources[fn["Properties"]["Role"]["Fn::GetAtt"][0]]
        documents = [p["PolicyDocument"] for p in role["Properties"]["Policies"]]
        expected = json.loads((REPO / ".chalice" / policies.expected_file(function, stage)).read_text())
        assert documents == [expected], f"{name}: not {policies.expected_file(function, stage)}"
        managed = role["Properties"].get("ManagedPolicyArns", [])
        assert ({"Ref": "DatabaseAccessPolicy"} in managed) == policies.needs(function, "database"), name


def test_policy_files_are_current() -> None:
    assert policies.main(["--check"]) == 0, "run: .venv/bin/python -m stack.policies --write"


# --- IAM ------------------------------------------------------------------------------------------


def _wildcard_admin(st: dict[str, Any]) -> bool:
    actions = [a for a in as_list(st.get("Action", [])) if isinstance(a, str)]
    resources = [r for r in as_list(st.get("Resource", [])) if isinstance(r, str)]
    return bool({"*", "*:*"} & set(actions)) and "*" in resources


def test_no_wildcard_admin_statement_anywhere(packaged: Packaged) -> None:
    found = list(statements(packaged.template))
    assert len(found) > 20
    bad = [st for st in found if _wildcard_admin(st) or (st.get("Effect") == "Allow" and "NotAction" in st)]
    for path in policy_files():
        bad += [st for st in statements(json.loads(path.read_text())) if _wildcard_admin(st)]
    assert not bad, bad


def test_function_policies_name_every_action() -> None:
    """No wildcard actions at all in the functions' files, and no operator-only actions."""
    assert policy_files()
    for path in policy_files():
        for st in statements(json.loads(path.read_text())):
            # The Denies: the workers' writes below the point-in-time archive (capabilities.archive_guard), the
            # archive pruner's deletes in the other roots (capabilities.archive_prune_guard)
            guards = (capabilities.archive_guard(), capabilities.archive_prune_guard(path.stem.split("-")[1]))
            assert st["Effect"] == "Allow" or st in guards, path.name
            for action in as_list(st["Action"]):
                assert "*" not in action, f"{path.name}: {action}"
                assert action not in ("s3:PutLifecycleConfiguration", "s3:DeleteObjectVersion", "s3:PutBucketPolicy"), (
                    f"{path.name}: {action} is for operators"
                )
            if "*" in as_list(st["Resource"]):
                unscoped = sorted(capabilities.UNSCOPED_ACTIONS)
                assert set(as_list(st["Action"])) <= capabilities.UNSCOPED_ACTIONS, (
                    f"{path.name}: {st['Sid']} on every resource (allowed only for {unscoped})"
                )


def test_kms_use_is_scoped_to_s3_and_the_stage_buckets() -> None:
    for path in policy_files():
        stage = path.stem.split("-")[1]
        for st in statements(json.loads(path.read_text())):
            # Every KMS grant is for keys of this account (aws:ResourceAccount): EC2 and RDS use the caller's
            # permissions on the key a copy names, so a copy under an attacker account's key (then shared there) is
            # refused; and an alias names a key only within its account, so another account's same-named alias is too.
            own = {"StringEquals": {"aws:ResourceAccount": "${aws:PrincipalAccount}"}}
            if st["Sid"].startswith("SnapshotKey"):  # snapshot copies and restores: through EC2/RDS only
                assert st["Condition"] in (
                    {"StringLike": {"kms:ViaService": ["ec2.*.amazonaws.com", "rds.*.amazonaws.com"]}, **own},
                    {"Bool": {"kms:GrantIsForAWSResource": "true"}, **own},
                ), path.name
            elif st["Sid"] in ("SignManifests", "VerifyManifests"):  # the manifest signing key, by its alias only
                assert as_list(st["Action"]) in (["kms:GenerateMac"], ["kms:VerifyMac"]), path.name
                assert st["Condition"] == {
                    "ForAnyValue:StringEquals": {"kms:ResourceAliases": names.signing_key_alias(stage)},
                    **own,
                }, path.name
            elif any(a.startswith("kms:") for a in as_list(st["Action"])):
                like = st["Condition"]["StringLike"]
                assert like["kms:ViaService"] == "s3.*.amazonaws.com"
                assert like["kms:EncryptionContext:aws:s3:arn"] == f"arn:aws:s3:::{names.bucket_prefix(stage)}*"


def test_snapshots_are_deleted_only_when_managed() -> None:
    for path in policy_files():
        for st in statements(json.loads(path.read_text())):
            deletes = [
                a
                for a in as_list(st["Action"])
                if a.endswith(("DeleteDBSnapshot", "DeleteDBClusterSnapshot", "DeleteSnapshot"))
            ]
            if deletes:
                assert st["Condition"] == {"StringEquals": {"aws:ResourceTag/lifeboat:managed": "true"}}, path.name


def test_database_access_is_scoped_by_parameters(packaged: Packaged) -> None:
    doc = packaged.resources["DatabaseAccessPolicy"]["Properties"]["PolicyDocument"]
    found = {st["Sid"]: st for st in statements(doc)}
    assert "${SecretsPrefix}*" in found["DatabasePasswords"]["Resource"]["Fn::Sub"]
    assert found["RdsIamLogin"]["Resource"] == {"Ref": "RdsDbUserArns"}
    assert packaged.template["Parameters"]["SecretsPrefix"]["Default"] == names.secrets_prefix(packaged.variant.stage)


# --- alarms ---------------------------------------------------------------------------------------


def test_alarms(packaged: Packaged) -> None:
    alarms = packaged.of_type("AWS::CloudWatch::Alarm")
    for name, alarm in alarms.items():
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": "AlarmTopic"}], name
    for metric in ("BackupFailed", "SnapshotFailed", "RestoreFailed"):
        failed = alarms[f"{metric}Alarm"]["Properties"]
        assert f"SUM({metric})" in failed["Metrics"][0]["Expression"]
        assert (failed["Threshold"], failed["ComparisonOperator"]) == (1, "GreaterThanOrEqualToThreshold")
    dead_man = alarms["NoBackupAlarm"]["Properties"]
    assert dead_man["TreatMissingData"] == "breaching"
    assert (dead_man["Threshold"], dead_man["ComparisonOperator"]) == (1, "LessThanThreshold")
    filters = packaged.of_type("AWS::Logs::MetricFilter")
    assert {t["MetricName"] for f in filters.values() for t in f["Properties"]["MetricTransformations"]} == {
        dead_man["MetricName"]
    }
    dlqs = [n for n, q in packaged.of_type("AWS::SQS::Queue").items() if "RedrivePolicy" not in q["Properties"]]
    watched = {
        a["Properties"]["Dimensions"][0]["Value"]["Fn::GetAtt"][0]
        for a in alarms.values()
        if a["Properties"].get("Namespace") == "AWS/SQS"
    }
    assert watched == set(dlqs)


def test_per_target_dead_mans_switches(packaged: Packaged) -> None:
    alarms = {
        (a["Properties"]["MetricName"], a["Properties"]["Dimensions"][1]["Value"]): a["Properties"]
        for a in packaged.of_type("AWS::CloudWatch::Alarm").values()
        if a["Properties"].get("MetricName") in ("BackupSucceeded", "SnapshotSucceeded")
    }
    expected = (
        {
            ("BackupSucceeded", "shop"): 86400 + 21600,
            ("BackupSucceeded", "billing"): 21600 + 5400,
            ("SnapshotSucceeded", "shop"): 86400 + 21600,
        }
        if packaged.variant.targets
        else {}
    )
    assert {k: a["Period"] for k, a in alarms.items()} == expected
    for alarm in alarms.values():
        assert alarm["TreatMissingData"] == "breaching"
        assert [d["Name"] for d in alarm["Dimensions"]] == ["service", "target"]


def test_alarm_metrics_match_what_the_app_emits(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The metric filter's JSON path and the alarms' dimensions against a real EMF line of the app."""
    from stack.template.app_model import AppModel, Function
    from stack.template.monitoring import FAILURE_METRICS, monitoring_resources
    from stack.template.targets import SUCCESS, WatchedTarget

    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    from chalicelib.observability import record

    record("BackupSucceeded", 1, "Count", "shop")
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model = AppModel(
        stage="dev",
        functions=[Function("backup_worker", 900, [], True, sqs=["backups"])],
        metrics_namespace="PgLifeboat",
    )
    resources = monitoring_resources(model, [WatchedTarget("shop", 86400)])
    pattern = resources["BackupWorkerBackupSucceededFilter"]["Properties"]["FilterPattern"]
    assert set(FAILURE_METRICS) | {m for m, _ in SUCCESS.values()} <= set(emitted_metrics()), (
        "an alarm watches a metric no code in chalicelib records"
    )
    m = re.fullmatch(r"\{ \$\.(\w+)\[0\] >= 1 \}", pattern)
    assert m, pattern
    assert line[m.group(1)][0] >= 1
    emf = line["_aws"]["CloudWatchMetrics"][0]
    alarm = resources["NoBackupAlarmShop"]["Properties"]
    assert emf["Namespace"] == alarm["Namespace"]
    assert [d["Name"] for d in alarm["Dimensions"]] in emf["Dimensions"]
    assert all(line[d["Name"]] == d["Value"] for d in alarm["Dimensions"])


def emitted_metrics() -> list[str]:
    """Metric names recorded anywhere in chalicelib (record("Name", ...) calls, and the drills' injectable
    svc.metrics("Name", ...) sink, whose default is record)."""
    found = []
    for path in (REPO / "chalicelib").rglob("*.py"):
        found += re.findall(r"(?:record|\.metrics)\(\s*\"([A-Za-z]+)\"", path.read_text())
    return found


# --- the layer the template refers to -------------------------------------------------------------


def test_layer_zip_holds_what_the_functions_expect(packaged: Packaged) -> None:
    zip_path = REPO / "layers" / "dist" / f"pg-clients-{packaged.variant.arch}.zip"
    if not zip_path.exists():
        pytest.skip(f"{zip_path.relative_to(REPO)} is not built (make layers)")
    with zipfile.ZipFile(zip_path) as zf:
        members = set(zf.namelist())
    for name, fn in functions(packaged).items():
        env = fn["Properties"]["Environment"]["Variables"]
        bundle = env["LIFEBOAT_CA_BUNDLE"]
        assert bundle.removeprefix("/opt/") in members, f"{name}: LIFEBOAT_CA_BUNDLE {bundle} is not in the layer"
        roots = [r.removeprefix("/opt/") for r in env["LIFEBOAT_PG_ROOTS"].split(":") if r.startswith("/opt/")]
        assert any(re.fullmatch(rf"{re.escape(root)}/\d+/bin/pg_dump", m) for root in roots for m in members), name


def test_code_and_layer_fit_lambdas_unzipped_limit(packaged: Packaged) -> None:
    def unzipped(path: Path) -> int:
        with zipfile.ZipFile(path) as zf:
            return sum(i.file_size for i in zf.infolist())

    total = unzipped(packaged.directory / "deployment.zip")
    layer = REPO / "layers" / "dist" / f"pg-clients-{packaged.variant.arch}.zip"
    if layer.exists():
        total += unzipped(layer)
    assert total < 250 * 1024 * 1024, f"{total / 2**20:.0f} MiB unzipped: Lambda allows 250 MiB with layers"
