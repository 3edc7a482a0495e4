"""Contacts and their properties: batch upsert (with per-input errors), batch read, GDPR
deletion, and reading or creating contact properties.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from infra.sandbox._http import Request, Response, empty_response, json_response
from infra.sandbox.hubspot_marketing.parsing import HubSpotParsing
from infra.sandbox.hubspot_marketing.records import _Contact, _Property
from infra.sandbox.hubspot_marketing.schemas import (
    BATCH_READ_BODY,
    GDPR_DELETE_BODY,
    PROPERTY_CREATE_BODY,
    UPSERT_BODY,
    _type_problem,
)
from infra.sandbox.hubspot_marketing.wire import (
    _PROPERTY_NAME,
    CONTACTS_OBJECT_TYPE_ID,
    DEFAULT_PROPERTY_GROUP,
    HubSpotApiError,
    _not_found,
    _standard_error,
    _validation,
    is_valid_email,
    iso_now,
)


def _input_context(item: Mapping[str, Any]) -> dict[str, list[str]]:
    context = {"id": [str(item.get("id"))]}
    if "objectWriteTraceId" in item:
        context["objectWriteTraceId"] = [str(item["objectWriteTraceId"])]
    return context


class ContactRoutes(HubSpotParsing):
    """Contact and property operations."""

    # -- contacts -------------------------------------------------------------------------------
    def _upsert(self, request: Request, match: re.Match[str]) -> Response:
        started = iso_now()
        inputs = self._json(request, UPSERT_BODY)["inputs"]
        self._check_batch_size(inputs)
        keys = [str(i["id"]).strip().lower() for i in inputs]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise _validation(
                f"Duplicate IDs found in batch input: {duplicates}. IDs must be unique",
                ids=duplicates,
            )
        traced = all("objectWriteTraceId" in i for i in inputs)
        with self._lock:
            problems = [self._upsert_problem(i) for i in inputs]
            errors = [
                _standard_error("VALIDATION_ERROR", p[1], _input_context(i), p[0])
                for i, p in zip(inputs, problems, strict=True)
                if p is not None
            ]
            if errors and not traced:
                first = errors[0]
                raise _validation(first["message"], **first["context"])
            results = [
                self._apply_upsert(i) for i, p in zip(inputs, problems, strict=True) if p is None
            ]
        return self._batch_body(self._shuffled(results), errors, started)

    def _upsert_problem(self, item: Mapping[str, Any]) -> tuple[str, str] | None:
        """``(code, message)`` when one upsert input cannot be applied, else ``None``."""
        if item.get("idProperty") != "email":
            return (
                "INVALID_ID_PROPERTY",
                f"idProperty must be a unique property such as 'email'; got "
                f"{item.get('idProperty')!r}",
            )
        email = str(item["id"]).strip().lower()
        if not is_valid_email(email):
            return "INVALID_EMAIL", f"Email address {item['id']} is invalid"
        if self._refusals.get(email, 0) > 0:
            self._refusals[email] -= 1
            return "CONTACT_LOCKED", f"Contact {item['id']} is being updated by another process"
        if email in self._blocklist:
            return (
                "BLOCKLISTED_EMAIL",
                f"Cannot write contact {item['id']}: the address was permanently deleted (GDPR) "
                "and is blocklisted",
            )
        for name, value in item["properties"].items():
            problem = self._value_problem(name, value, email)
            if problem is not None:
                return problem
        return None

    def _value_problem(self, name: str, value: str, email: str) -> tuple[str, str] | None:
        prop = self._properties.get(name)
        if prop is None:
            return "PROPERTY_DOESNT_EXIST", f'Property "{name}" does not exist'
        if prop.read_only:
            return "READ_ONLY_VALUE", f'Property "{name}" is read-only'
        if name == "email":
            if value.strip().lower() != email:
                return "INVALID_EMAIL", f"properties.email {value!r} does not match id {email!r}"
            return None
        if value == "":
            return None
        return _type_problem(prop, value)

    def _apply_upsert(self, item: Mapping[str, Any]) -> dict[str, Any]:
        email = str(item["id"]).strip().lower()
        now = iso_now()
        contact_id = self._by_email.get(email)
        new = contact_id is None
        if contact_id is None:
            contact_id = str(self._next_contact_id)
            self._next_contact_id += 1
            self._contacts[contact_id] = _Contact(
                contact_id,
                {"email": email, "hs_object_id": contact_id, "createdate": now},
                now,
                now,
            )
            self._by_email[email] = contact_id
        contact = self._contacts[contact_id]
        for name, value in item["properties"].items():
            if value == "":
                contact.properties.pop(name, None)
            else:
                contact.properties[name] = value
        contact.properties["lastmodifieddate"] = now
        contact.updated_at = now
        written = {"email", "hs_object_id", "createdate", "lastmodifieddate", *item["properties"]}
        wire = {**contact.to_wire(written), "new": new}
        if "objectWriteTraceId" in item:
            wire["objectWriteTraceId"] = item["objectWriteTraceId"]
        return wire

    def _batch_read(self, request: Request, match: re.Match[str]) -> Response:
        started = iso_now()
        body = self._json(request, BATCH_READ_BODY)
        self._check_batch_size(body["inputs"])
        if body["propertiesWithHistory"] and len(body["inputs"]) > 50:
            raise _validation("Batch read with propertiesWithHistory is limited to 50 inputs.")
        id_property = body.get("idProperty")
        if id_property not in (None, "email", "hs_object_id"):
            raise _validation(f"idProperty {id_property!r} is not a unique contact property")
        names = ["email", "hs_object_id", "createdate", "lastmodifieddate", *body["properties"]]
        with self._lock:
            found, missing = [], []
            for item in body["inputs"]:
                contact = self._contact_by(item["id"], id_property)
                if contact is None:
                    missing.append(item["id"])
                else:
                    found.append(contact.to_wire(names))
        errors = []
        if missing:
            message = (
                "Could not get some CONTACT objects, they may be deleted or not exist. Check "
                "that ids are valid."
            )
            errors.append(
                _standard_error("OBJECT_NOT_FOUND", message, {"ids": missing}, "OBJECT_NOT_FOUND")
            )
        return self._batch_body(self._shuffled(found), errors, started)

    def _contact_by(self, key: str, id_property: str | None) -> _Contact | None:
        if id_property == "email":
            contact_id = self._by_email.get(key.strip().lower())
            return self._contacts.get(contact_id) if contact_id else None
        return self._contacts.get(key)

    def _gdpr_delete(self, request: Request, match: re.Match[str]) -> Response:
        body = self._json(request, GDPR_DELETE_BODY)
        id_property = body.get("idProperty")
        if id_property not in (None, "email"):
            raise _validation(f"idProperty must be 'email' when given, got {id_property!r}")
        with self._lock:
            contact = self._contact_by(body["objectId"], id_property)
            if contact is None and id_property != "email":
                raise _not_found(f"No contact with id {body['objectId']!r}")
            email = contact.properties["email"] if contact else body["objectId"].strip().lower()
            if contact is not None:
                del self._contacts[contact.id]
                del self._by_email[email]
                for hub_list in self._lists.values():
                    hub_list.members.pop(contact.id, None)
            self._statuses.pop(email, None)
            self._opted_out_of_all.pop(email, None)
            self._blocklist.add(email)
        return empty_response()

    # -- properties -----------------------------------------------------------------------------
    @staticmethod
    def _check_object_type(match: re.Match[str]) -> None:
        if match["object"] not in ("contacts", CONTACTS_OBJECT_TYPE_ID):
            raise _not_found(
                f"Unable to infer object type from: {match['object']} (this stand-in serves "
                "contacts only)"
            )

    def _read_properties(self, request: Request, match: re.Match[str]) -> Response:
        self._check_object_type(match)
        with self._lock:
            results = [p.to_wire() for p in self._properties.values()]
        return json_response(HTTPStatus.OK, {"results": results})

    def _create_property(self, request: Request, match: re.Match[str]) -> Response:
        self._check_object_type(match)
        body = self._json(request, PROPERTY_CREATE_BODY)
        name = body["name"]
        if not _PROPERTY_NAME.match(name):
            raise _validation(
                f"Property name {name!r} is invalid: use lower-case letters, digits and "
                "underscores, starting with a letter"
            )
        if body["groupName"] != DEFAULT_PROPERTY_GROUP:
            raise _validation(f"Property group {body['groupName']!r} does not exist")
        options = body.get("options", [])
        if body["type"] in ("bool", "enumeration") and not options:
            raise _validation(f"Property {name!r} of type {body['type']} needs options")
        with self._lock:
            if name in self._properties:
                raise HubSpotApiError(
                    HTTPStatus.CONFLICT,
                    "OBJECT_ALREADY_EXISTS",
                    f"Property named '{name}' already exists.",
                )
            prop = _Property(
                name, body["label"], body["type"], body["fieldType"], body["groupName"], options
            )
            self._properties[name] = prop
        return json_response(HTTPStatus.CREATED, prop.to_wire())
