"""A moto S3 server that checks credentials, for the errors no retry can fix.

The session's ``moto_server`` accepts any key. Started with ``INITIAL_NO_AUTH_ACTION_COUNT``, moto
authenticates and authorises every request after that many: here the first two create an IAM user
and its access key, so the test holds a real key pair the server knows, and can present an unknown
key (403 InvalidAccessKeyId), the right key with a wrong secret (403 SignatureDoesNotMatch) or the
right pair without any permission (403 AccessDenied).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import boto3

from tests.conftest import free_port

Refusal = Literal["unknown key", "wrong secret", "no permission"]
REFUSALS: tuple[Refusal, ...] = ("unknown key", "wrong secret", "no permission")
EXPECTED_CODE: dict[Refusal, str] = {
    "unknown key": "InvalidAccessKeyId",
    "wrong secret": "SignatureDoesNotMatch",
    "no permission": "AccessDenied",
}


@dataclass(frozen=True)
class AuthenticatingS3:
    url: str
    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"

    def credentials(self, refusal: Refusal) -> tuple[str, str]:
        """(access key id, secret) that this server refuses for ``refusal``."""
        if refusal == "unknown key":
            return "AKIAUNKNOWNKEY000000", "whatever"
        if refusal == "wrong secret":
            return self.access_key_id, "not-the-secret"
        return self.access_key_id, self.secret_access_key  # the user has no policy at all


@contextmanager
def authenticating_s3(log: Path) -> Iterator[AuthenticatingS3]:
    """Start ``moto_server`` with authentication on, on a free loopback port; stop it after."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "2"}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start: {log.read_text()}") from None
                time.sleep(0.1)
        iam = boto3.client(
            "iam",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
        )
        iam.create_user(UserName="lake-writer")  # unauthenticated action 1 of 2
        key = iam.create_access_key(UserName="lake-writer")["AccessKey"]  # 2 of 2
        yield AuthenticatingS3(url, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
