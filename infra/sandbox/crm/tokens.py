"""OAuth for the CRM stand-in: the client-credentials token endpoint, token expiry, and
bearer authentication of API requests.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from http import HTTPStatus
from urllib.parse import parse_qs, unquote_plus

from infra.sandbox._http import Request, Response, json_response
from infra.sandbox.crm.store import CrmStore
from infra.sandbox.crm.wire import TOKEN_PATH, _oauth_error, hubspot_error


class TokenEndpoint(CrmStore):
    """Token issue, expiry and authentication."""

    def expire_tokens(self) -> None:
        """Expire every access token issued so far (simulates expiry mid-run)."""
        with self._lock:
            now = time.monotonic()
            self._tokens = {token: min(expiry, now) for token, expiry in self._tokens.items()}

    def _authenticate(self, request: Request) -> Response | None:
        header = request.header("authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return hubspot_error(
                HTTPStatus.UNAUTHORIZED,
                "INVALID_AUTHENTICATION",
                "Authentication credentials not found. This API supports OAuth 2.0 "
                "authentication: send 'Authorization: Bearer <access token>'.",
            )
        with self._lock:
            expiry = self._tokens.get(token.strip())
        if expiry is None:
            return hubspot_error(
                HTTPStatus.UNAUTHORIZED,
                "INVALID_AUTHENTICATION",
                "The OAuth token used to make this call is not valid.",
            )
        remaining = expiry - time.monotonic()
        if remaining <= 0:
            return hubspot_error(
                HTTPStatus.UNAUTHORIZED,
                "INVALID_AUTHENTICATION",
                f"The OAuth token used to make this call expired {int(-remaining)} second(s) ago.",
            )
        return None

    # -- token endpoint ---------------------------------------------------------------------
    def _client_credentials(self, request: Request, form: dict[str, list[str]]) -> tuple[str, str]:
        """Client id and secret from HTTP Basic (preferred) or the form body."""
        scheme, _, encoded = (request.header("authorization") or "").partition(" ")
        if scheme.lower() == "basic" and encoded:
            try:
                decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return "", ""
            client_id, _, secret = decoded.partition(":")
            return unquote_plus(client_id), unquote_plus(secret)
        first = {key: values[0] for key, values in form.items() if values}
        return first.get("client_id", ""), first.get("client_secret", "")

    def _token(self, request: Request) -> Response:
        with self._lock:
            self.token_requests += 1
        if request.method != "POST":
            return _oauth_error(
                HTTPStatus.METHOD_NOT_ALLOWED, "invalid_request", f"use POST on {TOKEN_PATH}"
            )
        content_type = (request.header("content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            return _oauth_error(
                HTTPStatus.BAD_REQUEST,
                "invalid_request",
                f"Content-Type must be application/x-www-form-urlencoded, got {content_type!r}",
            )
        form = parse_qs(request.body.decode("utf-8", "replace"), keep_blank_values=True)
        client_id, secret = self._client_credentials(request, form)
        if not (
            secrets.compare_digest(client_id, self.client_id)
            and secrets.compare_digest(secret, self.client_secret)
        ):
            return _oauth_error(
                HTTPStatus.UNAUTHORIZED,
                "invalid_client",
                f"client authentication failed for client_id {client_id!r}",
            )
        grant = (form.get("grant_type") or [""])[0]
        if not grant:
            return _oauth_error(HTTPStatus.BAD_REQUEST, "invalid_request", "grant_type is missing")
        if grant != "client_credentials":
            return _oauth_error(
                HTTPStatus.BAD_REQUEST,
                "unsupported_grant_type",
                f"grant_type {grant!r} is not supported; use client_credentials",
            )
        return self._issue_token()

    def _issue_token(self) -> Response:
        token = f"sandbox-{secrets.token_urlsafe(24)}"
        with self._lock:
            self._tokens[token] = time.monotonic() + self.token_ttl
        payload = {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": max(0, round(self.token_ttl)),
        }
        return json_response(HTTPStatus.OK, payload, headers={"Cache-Control": "no-store"})
