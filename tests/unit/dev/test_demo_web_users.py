"""The demo's Airflow user commands, parsed by Airflow's own CLI parser (the contract is Airflow's argparse)."""
from __future__ import annotations

import pytest

from kaapana_fhir.dev.demo_web import user_commands


@pytest.mark.parametrize("password", ["-Ab3_x", "--help", "plain-Pass_9", "-p"])
def test_a_random_password_is_one_argument_even_when_it_starts_with_a_dash(password: str) -> None:
    from airflow.cli.cli_parser import get_parser

    create, reset = user_commands("airflow", "kaapana", password)
    parser = get_parser()
    for cmd in (create, reset):
        args = parser.parse_args(cmd[1:])
        assert args.password == password
        assert args.username == "kaapana"
