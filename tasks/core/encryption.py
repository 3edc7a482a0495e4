"""Server-side encryption of the objects the project writes to its store, as configuration.

Pure: parsing and the object_store option names. The S3 adapter (``tasks.connectors.s3``) turns
a :class:`StoreEncryption` into boto3 arguments; the doctor (``tasks.connectors.storage``) checks
what the store actually did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["SseAlgorithm", "StoreEncryption", "store_encryption"]

SseAlgorithm = Literal["AES256", "aws:kms"]
# The names people write in the environment, and the header value each stands for.
_SSE_NAMES: dict[str, SseAlgorithm | None] = {
    "none": None,
    "": None,
    "sse-s3": "AES256",
    "aes256": "AES256",
    "sse-kms": "aws:kms",
    "aws:kms": "aws:kms",
}


@dataclass(frozen=True)
class StoreEncryption:
    """Server-side encryption for every object the project writes to the store.

    ``algorithm`` is the ``x-amz-server-side-encryption`` value: ``AES256`` (SSE-S3, keys managed
    by the store) or ``aws:kms`` (SSE-KMS, with ``kms_key_id`` naming the key: an id, an alias or
    an ARN).
    """

    algorithm: SseAlgorithm
    kms_key_id: str | None = None

    def storage_options(self) -> dict[str, str]:
        """The object_store options that make deltalake write with this encryption."""
        options: dict[str, str] = {"aws_server_side_encryption": self.algorithm}
        if self.kms_key_id:
            options["aws_sse_kms_key_id"] = self.kms_key_id
        return options

    def describe(self) -> str:
        if self.algorithm == "aws:kms":
            return f"SSE-KMS (aws:kms, key {self.kms_key_id})"
        return "SSE-S3 (AES256)"


def store_encryption(mode: str | None, kms_key_id: str | None) -> StoreEncryption | None:
    """Parse the configured encryption: ``none``, ``sse-s3``/``AES256`` or ``sse-kms``/``aws:kms``.

    Raises:
        ValueError: for an unknown mode, SSE-KMS without a key id, or a key id without SSE-KMS
            (a key that would silently be ignored).

    Example:
        >>> store_encryption("sse-kms", "alias/lake").storage_options()
        {'aws_server_side_encryption': 'aws:kms', 'aws_sse_kms_key_id': 'alias/lake'}
    """
    name = (mode or "").strip()
    if name.lower() not in _SSE_NAMES:
        raise ValueError(
            f"unknown server-side encryption {mode!r}; expected none, sse-s3 (AES256) or "
            "sse-kms (aws:kms)"
        )
    algorithm = _SSE_NAMES[name.lower()]
    key = (kms_key_id or "").strip() or None
    if algorithm == "aws:kms" and key is None:
        raise ValueError(
            "server-side encryption sse-kms needs a KMS key id (id, alias/name or ARN); "
            "set AUDIENCE_LAKE_S3_SSE_KMS_KEY_ID"
        )
    if algorithm != "aws:kms" and key is not None:
        raise ValueError(
            f"a KMS key id is set but server-side encryption is {name or 'none'!r}: "
            "set AUDIENCE_LAKE_S3_SSE=sse-kms to use the key, or remove the key id"
        )
    return None if algorithm is None else StoreEncryption(algorithm, key)
