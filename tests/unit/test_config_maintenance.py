"""The ``maintenance:`` section of pipeline.yaml: documented defaults, errors that name the key."""

from __future__ import annotations

import json

import pytest

from tasks.core.config import parse_pipeline, pipeline_json_schema
from tasks.core.config_maintenance import DEFAULT_RETENTION_HOURS, MaintenanceConfig
from tasks.errors import ConfigError
from tests.unit.test_config import MINIMAL


def test_defaults_apply_without_a_section() -> None:
    settings = parse_pipeline(MINIMAL, env={}).maintenance
    assert settings == MaintenanceConfig()
    assert settings.retention_hours == DEFAULT_RETENTION_HOURS == 168
    assert settings.target_size == 128 * 1024 * 1024
    assert settings.z_order["gold/audience_members"] == ["contact_key"]
    assert settings.tables == [] and settings.checkpoint and settings.max_attempts == 5


def test_a_section_overrides_the_defaults() -> None:
    text = MINIMAL + (
        "maintenance:\n"
        "  retention_hours: 48\n"
        "  target_file_mb: 32\n"
        "  z_order: {ops/sync_ledger: [destination, audience]}\n"
        "  tables: [gold/audience_members, ops/sync_ledger]\n"
    )
    settings = parse_pipeline(text, env={}).maintenance
    assert settings.retention_hours == 48 and settings.target_size == 32 * 1024 * 1024
    assert settings.z_order == {"ops/sync_ledger": ["destination", "audience"]}
    assert settings.tables == ["gold/audience_members", "ops/sync_ledger"]


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("retention_hours: 0", "maintenance.retention_hours: Input should be greater than or"),
        ("retension_hours: 24", "maintenance.retension_hours: Extra inputs are not permitted"),
        ("target_file_mb: 4096", "maintenance.target_file_mb: Input should be less than"),
        ("z_order: {gold/audience_members: []}", "gold/audience_members: name at least one"),
        ("z_order: {gold/a: [x, x]}", "a column is named twice"),
        ("z_order: {Gold-Members: [x]}", "maintenance.z_order.Gold-Members.[key]"),
        ("tables: [audience_members]", "maintenance.tables.0: String should match pattern"),
        ("max_attempts: 0", "maintenance.max_attempts: Input should be greater than"),
    ],
)
def test_bad_maintenance_settings_name_the_key(section: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_pipeline(MINIMAL + f"maintenance:\n  {section}\n", env={}, origin="p.yaml")
    assert expected in str(info.value)


def test_the_json_schema_documents_the_section() -> None:
    text = json.dumps(pipeline_json_schema())
    assert "Vacuum deletes files a table stopped using" in text
    assert "MaintenanceConfig" in text
