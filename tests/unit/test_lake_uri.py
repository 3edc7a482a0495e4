"""Lake URI validation: a typo is refused with the fix, never read as a local folder."""

from __future__ import annotations

import pytest

from tasks.core.settings import Settings, lake_uri_problem, load_settings
from tasks.errors import ConfigError


@pytest.mark.parametrize(
    "uri",
    [
        ".lake",
        "/var/lib/lake",
        "lake/dir",
        "file:///var/lib/lake",
        "s3://bucket",
        "s3://my.bucket-1/a/b",
        "s3a://bucket/lake",
    ],
)
def test_valid_roots(uri: str) -> None:
    assert lake_uri_problem(uri) is None
    assert Settings(lake_uri=uri).lake_uri == uri


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("s3:/bucket", "missing a '/' after 's3:' (write s3://bucket)"),
        ("s3:bucket/lake", "missing a '/' after 's3:' (write s3://bucket/lake)"),
        ("s3//bucket", "without its ':' (write s3://bucket)"),
        ("s3a//bucket", "without its ':' (write s3a://bucket)"),
        ("s3://", "names no bucket"),
        ("s3:///lake", "names no bucket"),
        ("s3://minio:9000/lake", "not a valid S3 bucket name"),
        ("s3://my bucket/lake", "not a valid S3 bucket name"),
        ("gs://bucket/lake", "unsupported scheme 'gs'"),
        ("https://host/lake", "unsupported scheme 'https'"),
        ("S3://bucket", "lowercase"),
        ("file://relative", "file:///absolute/path"),
        ("", "is empty"),
        (" s3://bucket", "whitespace"),
    ],
)
def test_typos_are_refused_with_the_fix(
    uri: str, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    problem = lake_uri_problem(uri)
    assert problem is not None and says in problem
    monkeypatch.setenv("AUDIENCE_LAKE_LAKE_URI", uri)
    with pytest.raises(ConfigError, match=r"^environment: AUDIENCE_LAKE_LAKE_URI: ") as caught:
        load_settings()
    assert says in str(caught.value) and "Value error" not in str(caught.value)
