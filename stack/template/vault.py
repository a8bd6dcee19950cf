"""The optional second-account vault: S3 replication of every backup object to a bucket in another AWS account.

Whoever controls this account (its root, an administrator, a leaked deploy role) can bypass a GOVERNANCE lock, or
schedule the deletion of the key that decrypts every backup; a copy in another account, under that account's own
Object Lock and KMS key, survives them. With VaultBucketArn, VaultAccountId and VaultKmsKeyArn set (condition
HasVault: all three, or there is no vault) the backup bucket gets one replication rule and S3 a role to replicate with:

* every object under the settings' key prefix (the logical backups and manifests, the snapshot labels, the failure
  records), with its tags and, when it has one at replication time, its Object Lock retention;
* SSE-KMS objects (all of them: the bucket refuses others) are decrypted with the stack's key and encrypted again
  with the vault's (VaultKmsKeyArn), and the replicas belong to the vault account (AccessControlTranslation);
* delete markers are not replicated and the role cannot ReplicateDelete: a plain delete here (a failed attempt's
  clean-up, or an attacker's) leaves the vault's copy as it is.

The role may read only what replication reads on this bucket, write only replicas into the vault bucket, and use the
two keys only through S3 for those two buckets. The vault account applies its own bucket policy and key policy
(README, "A second account (vault)"); this stack cannot, and should not be able to, change them.
"""

from __future__ import annotations

from stack.template.intrinsics import Json, getatt, if_, not_empty, ref, sub

CONDITION = "HasVault"
ROLE = "VaultReplicationRole"
# The bucket's ARN by its name: the role is named in the bucket's replication configuration, so the role's policy
# cannot GetAtt the bucket (a circular dependency).
SOURCE_BUCKET = sub("arn:${AWS::Partition}:s3:::pg-lifeboat-${Stage}-${AWS::AccountId}-${AWS::Region}")
SOURCE_OBJECTS = sub("arn:${AWS::Partition}:s3:::pg-lifeboat-${Stage}-${AWS::AccountId}-${AWS::Region}/*")
VAULT_OBJECTS = {"Fn::Join": ["", [ref("VaultBucketArn"), "/*"]]}

# What replication reads of a source object version (its data, ACL, tags, Object Lock retention and legal hold) and
# writes into the destination (the replica, its tags, the owner change to the vault account). No ReplicateDelete.
SOURCE_OBJECT_ACTIONS = (
    "s3:GetObjectVersionForReplication",
    "s3:GetObjectVersionAcl",
    "s3:GetObjectVersionTagging",
    "s3:GetObjectRetention",
    "s3:GetObjectLegalHold",
)
# S3 reads the bucket's replication configuration and lists it to replicate (AWS's minimum replication policy).
SOURCE_BUCKET_ACTIONS = ("s3:GetReplicationConfiguration", "s3:ListBucket")
DESTINATION_ACTIONS = ("s3:ReplicateObject", "s3:ReplicateTags", "s3:ObjectOwnerOverrideToBucketOwner")
VAULT_PARAMETERS = ("VaultBucketArn", "VaultAccountId", "VaultKmsKeyArn")


def vault_parameters() -> Json:
    return {
        "VaultBucketArn": {
            "Type": "String",
            "Default": "",
            "AllowedPattern": r"^$|^arn:aws[a-z-]*:s3:::[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
            "Description": "A bucket in another AWS account (Object Lock and versioning on, its policy allowing this"
            " stack's replication role: README 'A second account (vault)') that receives a copy of every backup"
            " object; empty: no vault. Only together with VaultAccountId and VaultKmsKeyArn: with any of the"
            " three empty there is no vault",
        },
        "VaultAccountId": {
            "Type": "String",
            "Default": "",
            "AllowedPattern": r"^$|^\d{12}$",
            "Description": "The vault bucket's account (12 digits): the replicas belong to it. Required with"
            " VaultBucketArn",
        },
        "VaultKmsKeyArn": {
            "Type": "String",
            "Default": "",
            "AllowedPattern": r"^$|^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[a-zA-Z0-9-]+$",
            "Description": "The vault account's KMS key (its full ARN) that encrypts the replicas; its key policy"
            " lets this stack's replication role kms:Encrypt. Required with VaultBucketArn",
        },
    }


def vault_conditions() -> Json:
    """All three parameters or no vault (a replication rule cannot be made without its account and key)."""
    return {CONDITION: {"Fn::And": [not_empty(ref(name)) for name in VAULT_PARAMETERS]}}


def replication_configuration(prefix: str) -> Json:
    """The backup bucket's ReplicationConfiguration (absent without a vault). `prefix`: the settings' key prefix."""
    rule = {
        "Id": "lifeboat-vault",
        "Status": "Enabled",
        "Priority": 1,
        "Filter": {"Prefix": prefix},
        "DeleteMarkerReplication": {"Status": "Disabled"},
        "SourceSelectionCriteria": {"SseKmsEncryptedObjects": {"Status": "Enabled"}},
        "Destination": {
            "Bucket": ref("VaultBucketArn"),
            "Account": ref("VaultAccountId"),
            "AccessControlTranslation": {"Owner": "Destination"},
            "EncryptionConfiguration": {"ReplicaKmsKeyID": ref("VaultKmsKeyArn")},
        },
    }
    return if_(CONDITION, {"Role": getatt(ROLE, "Arn"), "Rules": [rule]})


def vault_resources(stack_key_arn: Json) -> Json:
    """The replication role (condition HasVault). `stack_key_arn`: the bucket's KMS key."""
    return {
        ROLE: {
            "Type": "AWS::IAM::Role",
            "Condition": CONDITION,
            "Properties": {
                "Description": sub("pg-lifeboat ${Stage}: S3 replicates the backups to the vault account"),
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "s3.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                        }
                    ],
                },
                "Policies": [{"PolicyName": "replicate-to-vault", "PolicyDocument": replication_policy(stack_key_arn)}],
            },
        }
    }


def replication_policy(stack_key_arn: Json) -> Json:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadTheBackupBucket",
                "Effect": "Allow",
                "Action": list(SOURCE_BUCKET_ACTIONS),
                "Resource": SOURCE_BUCKET,
            },
            {
                "Sid": "ReadObjectVersionsToReplicate",
                "Effect": "Allow",
                "Action": list(SOURCE_OBJECT_ACTIONS),
                "Resource": SOURCE_OBJECTS,
            },
            {
                "Sid": "WriteReplicasIntoTheVault",
                "Effect": "Allow",
                "Action": list(DESTINATION_ACTIONS),
                "Resource": VAULT_OBJECTS,
            },
            {
                "Sid": "DecryptWithTheStackKey",
                "Effect": "Allow",
                "Action": "kms:Decrypt",
                "Resource": stack_key_arn,
                "Condition": _through_s3(sub("s3.${AWS::Region}.amazonaws.com"), SOURCE_BUCKET),
            },
            {
                "Sid": "EncryptWithTheVaultKey",
                "Effect": "Allow",
                "Action": "kms:Encrypt",
                "Resource": ref("VaultKmsKeyArn"),
                # The vault may be in another region: S3 of that region encrypts the replica.
                "Condition": _through_s3("s3.*.amazonaws.com", ref("VaultBucketArn")),
            },
        ],
    }


def _through_s3(service: Json | str, bucket_arn: Json) -> Json:
    """Only S3 may use the key, and only for the bucket (its ARN is the encryption context with an S3 Bucket Key,
    an object's ARN without one)."""
    objects = {"Fn::Join": ["", [bucket_arn, "/*"]]}
    return {"StringLike": {"kms:ViaService": service, "kms:EncryptionContext:aws:s3:arn": [bucket_arn, objects]}}
