"""A damaged stack state file (``stack.json``) is a named error telling what to do, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaapana_fhir.dev.stack import Stack, StackError
from kaapana_fhir.exceptions import ConfigError


@pytest.mark.parametrize(("text", "error"), [
    ("[" * 100_000, ConfigError),
    ('{"state_dir": "x", "services": [1]}', StackError),
    ('{"services": {}}', StackError),
    ("[1, 2]", ConfigError),
])
def test_damaged_state_is_a_named_error(tmp_path: Path, text: str, error: type[Exception]) -> None:
    (tmp_path / "stack.json").write_text(text)
    with pytest.raises(error) as exc:
        Stack.load(tmp_path)
    assert "stack.json" in str(exc.value) and ("stack" in str(exc.value).split("stack.json", 1)[1])


def test_missing_state_is_no_stack(tmp_path: Path) -> None:
    assert Stack.load(tmp_path) is None
