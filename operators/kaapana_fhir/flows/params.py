"""Typed run parameters shared by the three entries of every flow: Airflow operator, CLI and Kaapana container.

Each flow has one frozen dataclass (``flows/<flow>/params.py``) whose **field names are the
``workflow_form`` keys** of its DAG. The three entries build it the same way, so keys, env names and
defaults cannot drift:

* Airflow operator: constructor values, then :meth:`FlowParams.from_conf` (``dag_run.conf`` flat keys, then
  its ``workflow_form``) at run time;
* CLI: :meth:`FlowParams.from_cli` (argparse ``dest`` per field in the field's metadata);
* Kaapana container: :meth:`FlowParams.from_container` = defaults < flat conf keys (trigger-rule confs) <
  env ``KEY.upper()`` (operator ``env_vars``; Kaapana also puts every ``workflow_form`` key there as
  ``str(value)``) < ``workflow_form`` of ``$WORKFLOW_DIR/conf/conf.json``.

Empty values (``None``, ``""``, ``"None"``) never override: an empty form field keeps the default.
Values are coerced to the field's type (bool, int, str, optional str, tuple of str, or a mode ``Enum``: its
value, case-insensitive); a value that cannot be coerced, is not a member of the field's Enum or not one of the
field's ``choices`` is a :class:`~kaapana_fhir.exceptions.ConfigError` naming the key and where it came from.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import enum
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from kaapana_fhir.exceptions import ConfigError

P = TypeVar("P", bound="FlowParams")

EMPTY = (None, "", "None")


def param(
    default: Any,
    *,
    cli: str | None = None,
    invert_cli: bool = False,
    choices: tuple[str, ...] = (),
    split: str = "lines",
) -> Any:
    """A parameter field.

    :param default: default value (tuples for list parameters).
    :param cli: argparse ``dest`` of the CLI option that sets it (None: no CLI option).
    :param invert_cli: the CLI option is a negation (``--no-device`` sets ``include_device=False``).
    :param choices: allowed values of a str parameter that names something from a catalogue (a preset);
        modes are ``Enum`` fields instead (compared case-insensitively, stored lower-case).
    :param split: how a str becomes a tuple: ``lines`` (newline or ``;``) or ``words`` (comma or whitespace).
    """
    meta = {"cli": cli, "invert_cli": invert_cli, "choices": choices, "split": split}
    return dataclasses.field(default=default, metadata=meta)


def _split(text: str, how: str) -> tuple[str, ...]:
    if how == "words":
        return tuple(p for p in text.replace(",", " ").split() if p)
    return tuple(p.strip() for p in text.replace(";", "\n").splitlines() if p.strip())


@dataclasses.dataclass(frozen=True)
class FlowParams:
    """Base of the per-flow parameter dataclasses (see module docstring)."""

    #: name of the flow (error messages)
    FLOW: ClassVar[str] = "flow"

    # ---- field introspection ---------------------------------------------------------------------
    @classmethod
    def form_keys(cls) -> tuple[str, ...]:
        """The ``workflow_form`` keys (= field names)."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def env_name(cls, key: str) -> str:
        """Env var of ``key`` in the container (Kaapana upper-cases ``workflow_form`` keys)."""
        return key.upper()

    @classmethod
    def _types(cls) -> dict[str, Any]:
        return typing.get_type_hints(cls)

    @classmethod
    def _field(cls, key: str) -> dataclasses.Field[Any]:
        return {f.name: f for f in dataclasses.fields(cls)}[key]

    @classmethod
    def coerce(cls, key: str, value: Any, source: str = "value") -> Any:
        """``value`` as the type of field ``key``; ConfigError names ``source`` and the key."""
        hint = cls._types()[key]
        meta = cls._field(key).metadata
        origin = typing.get_origin(hint)
        try:
            if hint is bool:
                if isinstance(value, bool):
                    return value
                text = str(value).strip().lower()
                if text in ("1", "true", "yes", "on"):
                    return True
                if text in ("0", "false", "no", "off"):
                    return False
                raise ValueError(f"not a boolean: {value!r}")
            if isinstance(hint, type) and issubclass(hint, enum.Enum):
                if isinstance(value, hint):
                    return value
                text = str(value).strip().lower()
                allowed = [str(m.value) for m in hint]
                if text not in allowed:
                    raise ValueError(f"{value!r} is not one of {', '.join(allowed)}")
                return hint(text)
            if hint is int:
                if isinstance(value, bool):
                    raise ValueError(f"not an integer: {value!r}")
                return int(str(value).strip())
            if origin is tuple:
                if isinstance(value, str):
                    text = value.strip()
                    if text.startswith(("[", "(")):  # str(list) as Kaapana passes lists
                        value = ast.literal_eval(text)
                    else:
                        return _split(text, meta.get("split", "lines"))
                if isinstance(value, (list, tuple)):
                    return tuple(str(v).strip() for v in value if str(v).strip())
                raise ValueError(f"not a list: {value!r}")
            # str or str | None
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError(f"not a string: {value!r}")
            text = str(value).strip()
            choices = meta.get("choices") or ()
            if choices:
                text = text.lower()
                if text not in choices:
                    raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
            return text
        except (ValueError, SyntaxError, TypeError) as exc:
            raise ConfigError(f"{cls.FLOW} parameter {key!r} from {source}: {exc}") from None

    # ---- building --------------------------------------------------------------------------------
    def with_values(self: P, values: Mapping[str, Any], source: str = "values") -> P:
        """A copy with the known, non-empty ``values`` applied (unknown keys are ignored)."""
        known = set(self.form_keys())
        changes = {
            k: self.coerce(k, v, source) for k, v in values.items() if k in known and v not in EMPTY
        }
        return dataclasses.replace(self, **changes) if changes else self

    @classmethod
    def from_values(cls: type[P], values: Mapping[str, Any], source: str = "values") -> P:
        return cls().with_values(values, source)

    @classmethod
    def from_conf(cls: type[P], conf: Mapping[str, Any] | None, base: P | None = None) -> P:
        """Airflow operator entry: ``base`` (the constructor's values) < flat ``dag_run.conf`` keys <
        ``conf["workflow_form"]``."""
        conf = conf or {}
        out = base if base is not None else cls()
        flat = {k: v for k, v in conf.items() if not isinstance(v, Mapping)}
        out = out.with_values(flat, "dag_run.conf")
        return out.with_values(dict(conf.get("workflow_form") or {}), "workflow_form")

    @classmethod
    def from_env(cls: type[P], env: Mapping[str, str], base: P | None = None) -> P:
        """Env entry: ``KEY.upper()`` per field, values as Kaapana passes them (``str(value)``)."""
        out = base if base is not None else cls()
        values = {k: env[cls.env_name(k)] for k in cls.form_keys() if cls.env_name(k) in env}
        return out.with_values(values, "env")

    @classmethod
    def from_container(cls: type[P], conf: Mapping[str, Any] | None, env: Mapping[str, str]) -> P:
        """Kaapana container entry: defaults < flat conf keys < env < ``workflow_form``."""
        conf = conf or {}
        flat = {k: v for k, v in conf.items() if not isinstance(v, Mapping)}
        out = cls().with_values(flat, "conf.json")
        out = cls.from_env(env, base=out)
        return out.with_values(dict(conf.get("workflow_form") or {}), "conf.json workflow_form")

    @classmethod
    def from_cli(cls: type[P], namespace: argparse.Namespace, base: P | None = None) -> P:
        """CLI entry: the argparse ``dest`` named in each field's metadata."""
        out = base if base is not None else cls()
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            dest = f.metadata.get("cli")
            if not dest or not hasattr(namespace, dest):
                continue
            value = getattr(namespace, dest)
            if value is None or (isinstance(value, (list, tuple)) and not value):
                continue
            if f.metadata.get("invert_cli"):
                value = not value
            values[f.name] = value
        return out.with_values(values, "command line")

    # ---- output ----------------------------------------------------------------------------------
    def changed(self) -> dict[str, Any]:
        """The fields that differ from the defaults."""
        default = type(self)()
        return {k: getattr(self, k) for k in self.form_keys() if getattr(self, k) != getattr(default, k)}

    def to_env(self, *, only_changed: bool = True) -> dict[str, str]:
        """Env vars for the container (``KEY.upper()`` → ``str(value)``, lists as ``str(list)``, as Kaapana
        passes ``workflow_form`` values). Only non-default values by default, so that values of a flat
        trigger-rule conf still apply."""
        items = self.changed() if only_changed else {k: getattr(self, k) for k in self.form_keys()}
        out: dict[str, str] = {}
        for key, value in items.items():
            if value is None:
                continue
            out[self.env_name(key)] = str(list(value)) if isinstance(value, tuple) else str(value)
        return out
