"""Lenient parsing of DICOM JSON values (PS3.18 F.2) for the FHIR mapping: DA, TM, DT offsets, PN, IS, DS.

Every parser returns ``(value, problem)``: ``value`` is ``None`` when the field must be dropped and
``problem`` is a short rule text when the input was not valid DICOM (the caller records it as an
issue ``{tag, value, rule}`` and keeps the resource). Nothing here raises on bad header values.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from kaapana_fhir.exceptions import ConfigError

_TM_RE = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?$")
_TM_COLON_RE = re.compile(r"^(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?$")
_TZ_RE = re.compile(r"^([+-])(\d{2})(\d{2})$")
UNSIGNED_INT_MAX = 2_147_483_647


def tag_label(key: str) -> str:
    """``"00080030"`` → ``"(0008,0030)"``, the form used in messages and issues."""
    k = key.upper()
    return f"({k[:4]},{k[4:]})" if len(k) == 8 else key


# --------------------------------------------------------------------------- DICOM JSON access
def values(ds: dict[str, Any], key: str) -> list[Any]:
    """All values of element ``key`` (e.g. ``"00080060"``); ``[]`` when absent or present without ``Value``."""
    el = ds.get(key)
    if not isinstance(el, dict):
        return []
    v = el.get("Value")
    return list(v) if isinstance(v, list) else []


def first(ds: dict[str, Any], key: str) -> Any:
    """First value of ``key`` or None; strings are stripped of DICOM padding, empty strings become None."""
    for v in values(ds, key):
        if isinstance(v, str):
            v = v.strip().strip("\x00").strip()
            if not v:
                continue
        if v is not None:
            return v
    return None


def first_str(ds: dict[str, Any], key: str) -> str | None:
    v = first(ds, key)
    if v is None or isinstance(v, dict):
        return None
    return str(v)


def strings(ds: dict[str, Any], key: str) -> list[str]:
    """All non-empty string values (multi-valued CS/LO such as ModalitiesInStudy (0008,0061))."""
    out: list[str] = []
    for v in values(ds, key):
        if v is None or isinstance(v, dict):
            continue
        s = str(v).strip().strip("\x00").strip()
        if s:
            out.extend(p.strip() for p in s.split("\\") if p.strip())
    return out


# --------------------------------------------------------------------------- DA / TM / offsets
def parse_da(raw: Any) -> tuple[date | None, str | None]:
    """DA ``YYYYMMDD`` (also legacy ACR-NEMA ``YYYY.MM.DD``) → date; invalid → ``(None, rule)``."""
    if raw is None:
        return None, None
    s = str(raw).strip().strip("\x00").strip().replace(".", "")
    if not s:
        return None, None
    if not re.fullmatch(r"\d{8}", s):
        return None, "DA must be YYYYMMDD (PS3.5 6.2); value dropped"
    try:
        return date(int(s[:4]), int(s[4:6]), int(s[6:8])), None
    except ValueError:
        return None, "DA is not a calendar date; value dropped"


@dataclass(frozen=True)
class TimeOfDay:
    hour: int
    minute: int
    second: int
    fraction: str  # digits after the decimal point, "" if none

    def iso(self) -> str:
        frac = f".{self.fraction}" if self.fraction else ""
        return f"{self.hour:02d}:{self.minute:02d}:{self.second:02d}{frac}"


def parse_tm(raw: Any) -> tuple[TimeOfDay | None, str | None]:
    """TM ``HH[MM[SS[.F{1,6}]]]`` (also legacy ``HH:MM[:SS]``) → :class:`TimeOfDay`; invalid → ``(None, rule)``.

    Missing minutes/seconds become 0 (FHIR ``dateTime`` needs seconds once a time is given).
    """
    if raw is None:
        return None, None
    s = str(raw).strip().strip("\x00").strip()
    if not s:
        return None, None
    m = _TM_RE.match(s) or _TM_COLON_RE.match(s)
    if not m:
        return None, "TM must be HHMMSS.FFFFFF (PS3.5 6.2); time dropped, date kept"
    hh, mm, ss, frac = m.group(1), m.group(2) or "00", m.group(3) or "00", m.group(4) or ""
    h, mi, se = int(hh), int(mm), int(ss)
    if h > 23 or mi > 59 or se > 60:
        return None, "TM out of range (hour 0-23, minute 0-59, second 0-60); time dropped, date kept"
    return TimeOfDay(h, mi, min(se, 59), frac.rstrip("0")), None


def parse_tz_offset(raw: Any) -> tuple[str | None, str | None]:
    """TimezoneOffsetFromUTC (0008,0201) ``&ZZXX`` → ``"+01:00"``; invalid → ``(None, rule)``."""
    if raw is None:
        return None, None
    s = str(raw).strip().strip("\x00").strip()
    if not s:
        return None, None
    m = _TZ_RE.match(s)
    if not m:
        return None, "TimezoneOffsetFromUTC must be +HHMM or -HHMM (PS3.3 C.12.1.1.8); ignored"
    sign, hh, mm = m.group(1), int(m.group(2)), int(m.group(3))
    minutes = hh * 60 + mm
    if mm > 59 or (sign == "+" and minutes > 14 * 60) or (sign == "-" and minutes > 12 * 60):
        return None, "TimezoneOffsetFromUTC out of range (-1200..+1400); ignored"
    return f"{sign}{hh:02d}:{mm:02d}", None


@lru_cache(maxsize=32)
def zone(name: str) -> ZoneInfo:
    """An IANA time zone (``Europe/Berlin``); unknown names raise :class:`ConfigError`."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"unknown time zone {name!r} (rule: an IANA name such as Europe/Berlin)") from exc


def offset_in_zone(d: date, t: TimeOfDay, zone_name: str) -> str:
    """UTC offset (``+02:00``) of the local date/time in ``zone_name``, daylight saving time included."""
    local = datetime(d.year, d.month, d.day, t.hour, t.minute, t.second, tzinfo=zone(zone_name))
    off = local.utcoffset() or timedelta(0)
    total = int(off.total_seconds() // 60)
    sign = "+" if total >= 0 else "-"
    total = abs(total)
    return f"{sign}{total // 60:02d}:{total % 60:02d}"


def fhir_datetime(da: Any, tm: Any, tz: Any, zone_name: str | None) -> tuple[str | None, list[tuple[str, Any, str]]]:
    """FHIR ``dateTime`` from DA (date tag), TM (time tag) and TimezoneOffsetFromUTC.

    Rules (fhir-mappings.md 1.5): offset from (0008,0201), else the configured IANA zone, else the date
    only; never a time without offset; a bad time keeps the date; a bad date drops the element.
    Returns the value and problems as ``(which, raw, rule)`` with ``which`` in ``{"date", "time", "tz"}``.
    """
    problems: list[tuple[str, Any, str]] = []
    d, p = parse_da(da)
    if p:
        problems.append(("date", da, p))
    if d is None:
        return None, problems
    t, p = parse_tm(tm)
    if p:
        problems.append(("time", tm, p))
    off, p = parse_tz_offset(tz)
    if p:
        problems.append(("tz", tz, p))
    if t is None:
        return d.isoformat(), problems
    if off is None and zone_name:
        off = offset_in_zone(d, t, zone_name)
    if off is None:
        problems.append(("time", tm, "no TimezoneOffsetFromUTC (0008,0201) and no configured time zone; "
                                     "FHIR dateTime with a time needs an offset, time dropped, date kept"))
        return d.isoformat(), problems
    return f"{d.isoformat()}T{t.iso()}{off}", problems


# --------------------------------------------------------------------------- numbers
def parse_is(raw: Any, *, minimum: int = 0, maximum: int = UNSIGNED_INT_MAX) -> tuple[int | None, str | None]:
    """IS → int, tolerant of padding and ``1.0E+00``; non-integral or out of ``[minimum, maximum]`` → dropped."""
    if raw is None:
        return None, None
    if isinstance(raw, bool):
        return None, "IS must be an integer string; value dropped"
    if isinstance(raw, int):
        n = raw
    else:
        s = str(raw).strip().strip("\x00").strip()
        if not s:
            return None, None
        try:
            f = float(s)
        except ValueError:
            return None, "IS must be an integer string (PS3.5 6.2); value dropped"
        if not math.isfinite(f) or f != int(f):
            return None, "IS must be an integer string (PS3.5 6.2); value dropped"
        n = int(f)
    if n < minimum or n > maximum:
        return None, f"integer out of range {minimum}..{maximum}; value dropped"
    return n, None


def parse_ds(raw: Any) -> tuple[float | None, str | None]:
    """DS → float; a decimal comma (``1,5``) is read as ``1.5`` and reported; unparsable → dropped."""
    if raw is None:
        return None, None
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return (float(raw), None) if math.isfinite(float(raw)) else (None, "DS must be finite; value dropped")
    s = str(raw).strip().strip("\x00").strip()
    if not s:
        return None, None
    note = None
    if "," in s and "." not in s and s.count(",") == 1:
        s = s.replace(",", ".")
        note = "DS uses a decimal comma (PS3.5 6.2 allows only '.'); read as decimal point"
    try:
        f = float(s)
    except ValueError:
        return None, "DS must be a decimal string (PS3.5 6.2); value dropped"
    if not math.isfinite(f):
        return None, "DS must be finite; value dropped"
    return f, note


# --------------------------------------------------------------------------- PN
def pn_groups(value: Any) -> dict[str, str]:
    """A PN value (DICOM JSON object or a raw ``alpha=ideographic=phonetic`` string) → its component groups."""
    if isinstance(value, dict):
        return {k: str(v) for k, v in value.items() if k in ("Alphabetic", "Ideographic", "Phonetic") and v}
    if value is None:
        return {}
    parts = str(value).split("=")
    names = ("Alphabetic", "Ideographic", "Phonetic")
    return {names[i]: p for i, p in enumerate(parts[:3]) if p.strip()}


def human_name(value: Any) -> dict[str, Any] | None:
    """PN → FHIR ``HumanName``: ``family^given^middle^prefix^suffix``; the raw group is kept in ``text``.

    The Alphabetic group is used; without it the Ideographic, then the Phonetic group. Empty components
    are dropped; an all-empty name gives None.
    """
    groups = pn_groups(value)
    raw = groups.get("Alphabetic") or groups.get("Ideographic") or groups.get("Phonetic")
    if not raw:
        return None
    comps = [c.strip() for c in raw.split("^")] + [""] * 5
    family, given, middle, prefix, suffix = comps[:5]
    name: dict[str, Any] = {}
    text = raw.strip().strip("^").strip()
    if not text:
        return None
    name["text"] = text
    if family:
        name["family"] = family
    g = [x for x in (given, middle) if x]
    if g:
        name["given"] = g
    if prefix:
        name["prefix"] = [prefix]
    if suffix:
        name["suffix"] = [suffix]
    return name
