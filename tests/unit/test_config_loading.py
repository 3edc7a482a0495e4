"""Reading pipeline.yaml under attack and by mistake: alias bombs, duplicate keys, syntax errors,
``${NAME}`` reaching for credentials, missing secrets, and refresh tokens kept only in memory."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tasks.core.config import (
    MissingSecret,
    load_pipeline,
    missing_secrets,
    parse_pipeline,
    require_secrets,
)
from tasks.core.config_yaml import MAX_DEPTH, MAX_NODES, is_secret_name, read_yaml
from tasks.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """\
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


def billion_laughs(levels: int = 9) -> str:
    """The classic: each level aliases the previous one nine times (9**levels strings)."""
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        refs = ",".join([f"*l{i - 1}"] * 9)
        lines.append(f"l{i}: &l{i} [{refs}]")
    return MINIMAL + "\n".join(lines) + "\n"


# --- defect 6: alias expansion is bounded -----------------------------------------------------


def test_a_billion_laughs_file_is_refused_at_the_node_limit(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(billion_laughs())
    assert bomb.stat().st_size < 1_000  # a few hundred bytes describing 387 million strings
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_pipeline(bomb, env={})
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert message.startswith(f"{bomb}: expands to more than {MAX_NODES:,} YAML nodes")
    assert "\n" not in message
    assert elapsed < 5, elapsed  # measured ~0.1 s; the old loader took 7.8 s and 294 MB


def test_aliases_within_the_limit_still_work_and_merges_may_override() -> None:
    text = MINIMAL.replace(
        "    url: sqlite:///x.db\n    table: contacts\n",
        "    <<: &conn {url: sqlite:///x.db, table: contacts}\n    table: people\n",
    ).replace(
        "  - name: buyers\n    where: order_count > 0\n",
        "  - {name: buyers, where: &w order_count > 0}\n  - {name: again, where: *w}\n",
    )
    config = parse_pipeline(text, env={})
    source = config.sources["crm"]
    assert (source.url, source.table) == ("sqlite:///x.db", "people")  # type: ignore[union-attr]
    assert config.segments[1].where == "order_count > 0"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: &x [*x]\n", f"nested deeper than {MAX_DEPTH} levels (a recursive alias?) near a.0.0"),
        ("a: &x {b: *x}\n", "nested deeper than"),
        ("a: " + "[" * 5000 + "\n", f"line 1: nested deeper than {MAX_DEPTH} levels"),
        ("a: &s '" + "x" * 1000 + "'\nb: &l [" + ",".join(["*s"] * 5000) + "]\n", "characters"),
    ],
)
def test_recursive_deep_or_huge_expansions_fail_fast(text: str, message: str) -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError, match=re.escape(message)):
        read_yaml(text, "p.yaml")
    assert time.monotonic() - started < 5


# --- issue 7 defect 10: duplicate keys and syntax errors --------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "    table: contacts\n",
            "    table: contacts\n    table: people\n",
            "p.yaml: line 7, column 5: sources.crm.table: duplicate key "
            "(first defined at line 6, column 5)",
        ),
        (
            "destinations:\n",
            "sources: {}\ndestinations:\n",
            "p.yaml: line 12, column 1: sources: duplicate key (first defined at line 1, column 1)",
        ),
        (
            "    where: order_count > 0\n",
            "    where: order_count > 0\n    where: order_count > 5\n",
            "p.yaml: line 12, column 5: segments.0.where: duplicate key "
            "(first defined at line 11, column 5)",
        ),
        (
            "audiences: {buyers: list-1}",
            "audiences: {buyers: list-1, buyers: list-2}",
            "p.yaml: line 17, column 33: destinations.mc.audiences.buyers: duplicate key "
            "(first defined at line 17, column 17)",
        ),
    ],
)
def test_duplicate_keys_are_an_error_naming_path_and_lines(
    old: str, new: str, message: str
) -> None:
    assert old in MINIMAL
    with pytest.raises(ConfigError) as info:
        parse_pipeline(MINIMAL.replace(old, new, 1), env={}, origin="p.yaml")
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sources: [\n", "p.yaml: line 2, column 1: not valid YAML: expected the node content"),
        (
            "sources:\n  crm: {kind: sql\n  x: 1\n",
            "p.yaml: line 3, column 4: not valid YAML: expected ',' or '}', but got ':'",
        ),
        ("a: 'open\n", "p.yaml: line 2, column 1: not valid YAML: found unexpected end of stream"),
        ("a: b: c\n", "p.yaml: line 1, column 5: not valid YAML: mapping values are not allowed"),
        ("a: 1\n\tb: 2\n", "p.yaml: line 2, column 1: not valid YAML: found character '\\t'"),
        (
            "a: 1\n---\nb: 2\n",
            "p.yaml: line 2, column 1: not valid YAML: expected a single document in the stream "
            "(line 1), but found another document",
        ),
    ],
)
def test_a_yaml_syntax_error_is_one_line_with_line_and_column(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_pipeline(text, env={}, origin="p.yaml")
    message = str(info.value)
    assert message.startswith(expected), message
    assert "\n" not in message


# --- defect 7: ${NAME} never reaches a credential and never echoes a value ---------------------


@pytest.mark.parametrize(
    "name",
    [
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_ACCESS_KEY_ID",
        "AUDIENCE_LAKE_SECRET_CRM_CLIENT_SECRET",
        "AUDIENCE_LAKE_PEPPER",
        "DB_PASSWORD",
        "GITHUB_TOKEN",
        "STRIPE_SECRETKEY",
        "MAILCHIMP_API_KEY",
        "SMTP_PASS",
        "POSTGRES_DSN",
        "GOOGLE_APPLICATION_CREDENTIALS",
    ],
)
def test_secret_named_variables_are_refused_with_a_pointer_to_secret_refs(name: str) -> None:
    canary = "wJalrXUtnFEMI-canary-value"
    for template in (f"${{{name}}}", f"${{{name}:-fallback}}"):
        text = MINIMAL.replace("sqlite:///x.db", f"sqlite:///{template}.db")
        with pytest.raises(ConfigError) as info:
            parse_pipeline(text, env={name: canary}, origin="p.yaml")
        message = str(info.value)
        assert message.startswith(f"p.yaml: sources.crm.url: ${{{name}}} looks like a secret")
        assert "{secret: NAME}" in message
        assert canary not in message


def test_the_secret_name_rule_spares_ordinary_names() -> None:
    ordinary = [
        "AUDIENCE_LAKE_CRM_URL",
        "AUDIENCE_LAKE_CRM_CLIENT_ID",
        "AUDIENCE_LAKE_SANDBOX_DIR",
        "AUDIENCE_LAKE_EVENTS_PORT",
        "DATA_DIR",
        "MONKEY_ISLAND",
        "PASSENGER_COUNT",
    ]
    assert [n for n in ordinary if is_secret_name(n)] == []
    load_pipeline(ROOT / "pipeline.yaml", env={})  # the repository's config uses only these


def test_a_rejected_value_from_the_environment_is_shown_as_its_variable() -> None:
    canary = "hunter2-canary-7d1e"
    text = MINIMAL.replace("where: order_count > 0", "where: \"country = '${SEG_COUNTRY}' AND\"")
    with pytest.raises(ConfigError) as info:
        parse_pipeline(text, env={"SEG_COUNTRY": canary}, origin="p.yaml")
    message = str(info.value)
    assert canary not in message
    assert "segment 'buyers': invalid predicate" in message and "${SEG_COUNTRY}" in message


def test_a_missing_variable_names_the_key_path() -> None:
    with pytest.raises(
        ConfigError, match=r"^p\.yaml: sources\.crm\.url: environment variable NOPE"
    ):
        parse_pipeline(MINIMAL.replace("sqlite:///x.db", "${NOPE}"), env={}, origin="p.yaml")


# --- issue 7 defect 10: missing secrets ---------------------------------------------------------


def test_missing_secrets_are_listed_with_key_path_and_variable() -> None:
    text = MINIMAL.replace(
        "    fields: {source_id: id}\n",
        "    fields: {source_id: id}\n    password: {secret: crm_db}\n",
    )
    config = parse_pipeline(text, env={})
    assert missing_secrets(config, env={}) == [
        MissingSecret("sources.crm.password", "crm_db", "AUDIENCE_LAKE_SECRET_CRM_DB"),
        MissingSecret("destinations.mc.api_key", "mc_key", "AUDIENCE_LAKE_SECRET_MC_KEY"),
    ]
    env = {"AUDIENCE_LAKE_SECRET_CRM_DB": "x"}
    with pytest.raises(ConfigError) as info:
        require_secrets(config, env=env, origin="p.yaml")
    assert str(info.value) == (
        "p.yaml: destinations.mc.api_key: secret 'mc_key' is not set "
        "(export AUDIENCE_LAKE_SECRET_MC_KEY)"
    )
    require_secrets(config, env={**env, "AUDIENCE_LAKE_SECRET_MC_KEY": "k"})


def test_a_disabled_source_needs_no_secret() -> None:
    text = MINIMAL.replace(
        "segments:",
        "  legacy:\n    kind: sql\n    role: orders\n    enabled: false\n    url: sqlite:///y.db\n"
        "    table: orders\n    primary_key: id\n    password: {secret: legacy_db}\n"
        "    fields: {order_id: id, email: e, amount: a, updated_at: u}\nsegments:",
    )
    config = parse_pipeline(text, env={})
    assert [m.secret for m in missing_secrets(config, env={})] == ["mc_key"]


def test_load_pipeline_checks_secrets_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(MINIMAL)
    load_pipeline(path, env={})
    with pytest.raises(ConfigError, match=r"destinations\.mc\.api_key: secret 'mc_key'"):
        load_pipeline(path, env={}, check_secrets=True)


# --- defect 8: a rotated refresh token needs a durable store --------------------------------------

REST = """\
sources:
  shop:
    kind: rest
    role: contacts
    base_url: https://acme.example.com
    path: /customers.json
    records_path: customers
    primary_key: id
    fields: {source_id: id, email: email, updated_at: updated_at}
    auth: {type: oauth2_refresh_token, token_url: /oauth/token, client_id: cid,
           refresh_token: {secret: rt}STORE}
"""


@pytest.mark.parametrize(
    ("store", "message"),
    [
        ("", "p.yaml: sources.shop.auth: token_store: required for oauth2_refresh_token"),
        (
            ", token_store: {kind: memory, name: k}",
            "p.yaml: sources.shop.auth.token_store: kind 'memory' keeps a rotated "
            "refresh token only in this process",
        ),
        (", token_store: {kind: env, name: SHOP_RT}", "kind 'env' keeps a rotated refresh token"),
    ],
)
def test_refresh_token_auth_without_a_durable_store_fails_at_load(store: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_pipeline(REST.replace("STORE", store), env={}, origin="p.yaml")
    assert message in str(info.value)


@pytest.mark.parametrize(
    "store",
    [
        ", token_store: {kind: prefect_secret, name: shop-rt}",
        ", token_store: {kind: memory, name: k, process_only: true}",
    ],
)
def test_a_durable_or_acknowledged_store_loads(store: str) -> None:
    parse_pipeline(REST.replace("STORE", store), env={})
