"""``make bench``: run every ``tests/bench/bench_*.py`` and print one table.

Each bench module exposes ``run(ctx: BenchContext) -> list[Row]``. Rows carry the measured value and,
where the issue asks for one, a ratio measured in the same run against a baseline (e.g. our import vs
raw POSTs of the same Bundles). The stack is started once for all benches (or reused via env URLs).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

log = logging.getLogger("bench")


@dataclass
class Row:
    bench: str
    metric: str
    value: float
    unit: str
    ratio: float | None = None
    ratio_of: str = ""
    note: str = ""


@dataclass
class BenchContext:
    quick: bool
    workdir: Path
    _stack: Any = None
    extras: dict[str, Any] = field(default_factory=dict)

    def stack(self) -> Any:
        if self._stack is None:
            from kaapana_fhir.dev import stack as devstack
            from tests.support.stack_env import external_stack

            self._stack = external_stack(self.workdir)
            if self._stack is None:
                self._stack = devstack.up(self.workdir / "stack", progress=lambda m: log.info("%s", m))
                self.extras["owns_stack"] = True
        return self._stack

    def close(self) -> None:
        if self._stack is not None and self.extras.get("owns_stack"):
            self._stack.stop()


def _fmt(v: float | None) -> str:
    if v is None:
        return ""
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def print_table(rows: list[Row]) -> None:
    headers = ["bench", "metric", "value", "unit", "ratio", "ratio of", "note"]
    data = [[r.bench, r.metric, _fmt(r.value), r.unit, _fmt(r.ratio), r.ratio_of, r.note] for r in rows]
    widths = [max(len(h), *(len(d[i]) for d in data)) if data else len(h) for i, h in enumerate(headers)]
    line = " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=False))
    sys.stdout.write(line + "\n" + "-+-".join("-" * w for w in widths) + "\n")
    for d in data:
        sys.stdout.write(" | ".join(c.ljust(w) for c, w in zip(d, widths, strict=False)) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (CI smoke run)")
    ap.add_argument("-k", default="", help="only benches whose module name contains this")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    ctx = BenchContext(quick=args.quick, workdir=Path(tempfile.mkdtemp(prefix="kf-bench-")))
    rows: list[Row] = []
    failed = 0
    try:
        for path in sorted(HERE.glob("bench_*.py")):
            if args.k and args.k not in path.stem:
                continue
            spec = importlib.util.spec_from_file_location(path.stem, path)
            mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            t0 = time.perf_counter()
            try:
                spec.loader.exec_module(mod)  # type: ignore[union-attr]
                rows.extend(mod.run(ctx))
            except Exception:  # report the failing bench and go on with the others
                failed += 1
                log.error("bench %s failed:\n%s", path.stem, traceback.format_exc())
                rows.append(Row(path.stem, "FAILED", float("nan"), "", note="see log"))
            log.info("%s done in %.1fs", path.stem, time.perf_counter() - t0)
    finally:
        ctx.close()
    print_table(rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
