"""pipeline.yaml validation: typos, wrong types and dangling references fail at load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.core.config import load_pipeline, parse_pipeline, pipeline_json_schema
from tasks.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """
sources:
  crm:
    kind: sql
    role: contacts
    url: sqlite:///x.db
    table: contacts
    primary_key: id
    fields: {source_id: id}
segments:
  - name: buyers
    where: order_count > 0
destinations:
  mc:
    kind: mailchimp
    base_url: http://127.0.0.1:1
    api_key: {secret: mc_key}
    audiences: {buyers: list-1}
"""


def test_repository_pipeline_yaml_loads() -> None:
    config = load_pipeline(ROOT / "pipeline.yaml", env={})
    assert {s.role for s in config.sources.values()} == {
        "contacts",
        "orders",
        "events",
        "enrichment",
    }
    assert config.destinations["mailchimp"].audiences


def test_minimal_config_is_valid() -> None:
    config = parse_pipeline(MINIMAL, env={})
    assert config.segments[0].name == "buyers"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("    table: contacts", "    tabel: contacts", "sources.crm.tabel: Extra inputs"),
        ("    kind: sql", "    kind: mysqlx", "sources.crm: Input tag 'mysqlx'"),
        ("audiences: {buyers: list-1}", "audiences: {vips: list-1}", "unknown segment 'vips'"),
        ("where: order_count > 0", "where: orders > 0", "segment 'buyers': unknown column"),
        ("where: order_count > 0", "where: order_count >", "segment 'buyers': invalid predicate"),
        ("where: order_count > 0", "where: order_count + 1", "is Int64, not a boolean"),
        ("    role: contacts", "    role: orders", "unknown canonical field(s) ['source_id']"),
        ("    fields: {source_id: id}", "    fields: {sauce_id: id}", "unknown canonical field"),
    ],
)
def test_bad_config_names_the_key_path(old: str, new: str, expected: str) -> None:
    assert old in MINIMAL
    with pytest.raises(ConfigError) as info:
        parse_pipeline(MINIMAL.replace(old, new), env={}, origin="p.yaml")
    assert expected in str(info.value)
    assert str(info.value).startswith("p.yaml")


def test_a_contacts_source_is_required() -> None:
    text = MINIMAL.replace("role: contacts", "role: enrichment").replace(
        "source_id: id", "email: e"
    )
    with pytest.raises(ConfigError, match="at least one source must have role 'contacts'"):
        parse_pipeline(text, env={})


def test_wrong_type_names_the_field() -> None:
    text = MINIMAL.replace("    primary_key: id", "    primary_key: id\n    chunk_size: lots")
    with pytest.raises(ConfigError, match=r"sources\.crm\.chunk_size: Input should be a valid"):
        parse_pipeline(text, env={})


def test_environment_interpolation_and_missing_variable() -> None:
    text = MINIMAL.replace("sqlite:///x.db", "sqlite:///${DATA_DIR:-/tmp}/x.db")
    assert parse_pipeline(text, env={}).sources["crm"].url == "sqlite:////tmp/x.db"  # type: ignore[union-attr]
    assert parse_pipeline(text, env={"DATA_DIR": "/d"}).sources["crm"].url == "sqlite:////d/x.db"  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match=r"sources\.crm\.url: environment variable NOPE"):
        parse_pipeline(MINIMAL.replace("sqlite:///x.db", "${NOPE}"), env={})


def test_not_yaml_and_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_pipeline("sources: [", env={})
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse_pipeline("- a\n- b\n", env={})


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml: cannot read"):
        load_pipeline(tmp_path / "nope.yaml")


def test_json_schema_documents_fields() -> None:
    schema = pipeline_json_schema()
    text = json.dumps(schema)
    assert "SQL predicate over customer features" in text
    assert "PipelineConfig" in schema["title"]


def test_a_source_named_like_a_kind_keeps_its_name_in_the_error_path() -> None:
    text = MINIMAL.replace("  crm:\n", "  sql:\n").replace("    table: contacts", "    tabel: x")
    with pytest.raises(ConfigError, match=r"sources\.sql\.tabel: Extra inputs"):
        parse_pipeline(text, env={})


MAPPED = """
version: 1
sources:
  people: {kind: files, role: contacts, path: ./x, format: csv}
segments:
  - {name: champions, where: order_count >= 1}
destinations:
  mailchimp:
    kind: mailchimp
    base_url: https://us1.api.mailchimp.com
    api_key: {secret: mc}
    audiences:
      champions:
        list: L1
        fields:
          LTV: %s
"""


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ("{column: lifetime_valu, type: number}",
         "destinations.mailchimp.audiences.champions.fields.LTV.column: unknown column "
         "'lifetime_valu'"),
        ("{column: lifetime_value, format: '%%Y'}",
         "destinations.mailchimp.audiences.champions.fields.LTV.format: lifetime_value is a "
         "number"),
        ("{column: first_name, value: x}", "give exactly one of 'column' or 'value'"),
    ],
)  # fmt: skip
def test_field_mappings_are_checked_against_the_gold_schema_naming_the_key(
    mapping: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_pipeline(MAPPED % mapping, env={})
    assert message in str(caught.value)


def test_an_audience_object_and_a_bare_list_id_mean_the_same_list() -> None:
    config = parse_pipeline(MAPPED % "{column: lifetime_value, type: number, format: '0.00'}",
                            env={})  # fmt: skip
    audience = config.destinations["mailchimp"].audiences["champions"]
    assert audience.list_id == "L1" and audience.mode == "upsert" and audience.holdout == 0
    assert config.destinations["mailchimp"].list_ids() == ["L1"]


def test_a_source_may_not_take_the_name_of_the_platform_read_back_table() -> None:
    text = MINIMAL.replace("  crm:", "  platform_suppressions:")
    assert text != MINIMAL
    with pytest.raises(ConfigError, match=r"'platform_suppressions': the name is reserved") as info:
        parse_pipeline(text, env={}, origin="p.yaml")
    assert "'bronze/platform_suppressions'" in str(info.value)
    assert "rename the source" in str(info.value)
