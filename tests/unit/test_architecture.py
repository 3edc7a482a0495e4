"""The layer rules of ARCHITECTURE §2, enforced by import-linter (contracts in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run(
        [str(lint_imports)], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 kept, 0 broken" in done.stdout


def test_registries_cover_every_configured_kind() -> None:
    from typing import get_args

    from tasks.connectors.destinations import DESTINATIONS, PLATFORMS
    from tasks.connectors.sources import SOURCE_READERS
    from tasks.core.config import Destination, Source

    source_kinds = {
        get_args(m.model_fields["kind"].annotation)[0] for m in get_args(get_args(Source)[0])
    }
    assert source_kinds == set(SOURCE_READERS)
    destination_kinds = {
        get_args(m.model_fields["kind"].annotation)[0] for m in get_args(get_args(Destination)[0])
    }
    assert destination_kinds == set(PLATFORMS)
    assert set(DESTINATIONS) <= set(PLATFORMS)
