"""The MinIO policies of ``infra/minio``: least privilege for the configured bucket and prefix.

No MinIO runs here, so the policies are checked as documents: ``render-policy.sh`` (the script
``init.sh`` runs) writes each template for a bucket and prefix, and every statement must name
only that bucket, only objects under that prefix, only the actions the pipeline (or an analyst)
needs; names that could widen a policy are refused.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

MINIO = Path(__file__).resolve().parents[2] / "infra" / "minio"
RENDER = MINIO / "render-policy.sh"

WRITER_ACTIONS = {
    "s3:GetBucketLocation",
    "s3:ListBucketMultipartUploads",
    "s3:ListBucket",
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
}
READER_ACTIONS = {"s3:GetBucketLocation", "s3:ListBucket", "s3:GetObject"}


def _render(template: str, bucket: str, prefix: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(RENDER), str(MINIO / template), bucket, prefix],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _policy(template: str, bucket: str, prefix: str) -> dict[str, Any]:
    done = _render(template, bucket, prefix)
    assert done.returncode == 0, done.stderr
    policy: dict[str, Any] = json.loads(done.stdout)
    return policy


def _actions(policy: dict[str, Any]) -> set[str]:
    return {action for s in policy["Statement"] for action in s["Action"]}


@pytest.mark.parametrize(
    ("template", "allowed"),
    [("lake-policy.json", WRITER_ACTIONS), ("lake-readonly-policy.json", READER_ACTIONS)],
)
@pytest.mark.parametrize("prefix", ["lake", "/teams/growth/lake/"])
def test_each_policy_is_limited_to_the_bucket_and_prefix(
    template: str, allowed: set[str], prefix: str
) -> None:
    bucket = "acme-audiences"
    clean = prefix.strip("/")
    policy = _policy(template, bucket, prefix)

    assert "@" not in json.dumps(policy), "a placeholder was left in the policy"
    assert _actions(policy) == allowed
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        for resource in statement["Resource"]:
            assert resource in {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/{clean}/*"}
            if resource.endswith("/*"):  # object actions only on objects under the prefix
                assert all(a not in {"s3:ListBucket"} for a in statement["Action"])
        if "s3:ListBucket" in statement["Action"]:
            prefixes = statement["Condition"]["StringLike"]["s3:prefix"]
            assert prefixes == [clean, f"{clean}/*"]


def test_the_analyst_policy_cannot_write_or_delete() -> None:
    actions = _actions(_policy("lake-readonly-policy.json", "acme-audiences", "lake"))
    assert not {a for a in actions if a.startswith(("s3:Put", "s3:Delete", "s3:Abort"))}


@pytest.mark.parametrize(
    ("bucket", "prefix"),
    [
        ("*", "lake"),
        ("acme|x", "lake"),
        ('acme"', "lake"),
        ("acme", "*"),
        ("acme", ""),
        ("acme", "lake/../other"),
        ("acme", 'lake", "x'),
    ],
)
def test_names_that_could_widen_a_policy_are_refused(bucket: str, prefix: str) -> None:
    done = _render("lake-policy.json", bucket, prefix)
    assert done.returncode == 2
    assert "render-policy: invalid" in done.stderr
    assert done.stdout == ""


def test_init_creates_both_policies_and_no_bucket_is_hard_coded() -> None:
    script = (MINIO / "init.sh").read_text()
    assert "ensure_policy audience-lake-rw lake-policy.json" in script
    assert "ensure_policy audience-lake-ro lake-readonly-policy.json" in script
    for template in ("lake-policy.json", "lake-readonly-policy.json"):
        assert "audience-lake" not in (MINIO / template).read_text()
