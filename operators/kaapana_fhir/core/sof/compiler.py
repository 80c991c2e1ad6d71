"""Compile FHIRPath expressions of a ViewDefinition into plain Python closures.

The common subset of view paths is compiled (types are resolved statically in the R4 model, so
``value.ofType(Quantity).value`` becomes two dict lookups): member access (choice elements, backbone
elements), ``where``, ``exists``, ``empty``, ``first``, ``last``, ``count``, ``not``, ``iif``, ``join``,
``toString``, ``ofType`` on choice elements, ``extension(url)``, string functions (``lower``, ``upper``,
``contains``, ``startsWith``, ``endsWith``, ``length``, ``trim``), ``getResourceKey``, ``getReferenceKey``,
``lowBoundary``/``highBoundary``, indexers, literals, constants, ``%rowIndex``, ``%resource``, and the
operators ``= != < > <= >= and or xor implies not in contains | + - * / &``.

Anything else (date comparisons, ``is``/``as``, unknown elements, other functions) raises
:class:`Unsupported` and the caller falls back to fhirpathpy for the whole expression, so results
never depend on which engine ran. Every compiled function has the signature ``fn(focus, env) -> list``:
``focus`` is a list of JSON values, ``env`` is ``(resource, row_index)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kaapana_fhir.core.sof.fhirpath import _PRIMITIVES, MODEL, boundary, reference_key

Env = tuple[Any, int]
Fn = Callable[[list[Any], Env], list[Any]]
#: static type: ("complex", type path) | ("primitive", kind) | ("choice", (path, [types])) | None (unknown)
SType = tuple[str, Any] | None

_STRINGY = {"string", "code", "id", "uri", "url", "canonical", "oid", "uuid", "markdown", "base64Binary"}
_NUMERIC = {"integer", "decimal", "positiveInt", "unsignedInt", "integer64"}
_DATELIKE = {"date", "dateTime", "instant", "time"}
STRING: SType = ("primitive", "string")
BOOLEAN: SType = ("primitive", "boolean")
INTEGER: SType = ("primitive", "integer")
DECIMAL: SType = ("primitive", "decimal")
EMPTY_T: SType = ("empty", None)


class Unsupported(Exception):
    """The expression uses something outside the compiled subset."""


def kind_of(t: SType) -> str | None:
    if t is None:
        return None
    if t[0] == "primitive":
        k = str(t[1])
        if k in _STRINGY:
            return "string"
        if k in _NUMERIC:
            return "number"
        if k == "boolean":
            return "boolean"
        if k in _DATELIKE:
            return "date"
        return None
    if t[0] == "empty":
        return "empty"
    if t[0] == "complex":
        return "complex"
    return None


def _merge(a: SType, b: SType) -> SType:
    if a == b:
        return a
    if a == EMPTY_T:
        return b
    if b == EMPTY_T:
        return a
    ka, kb = kind_of(a), kind_of(b)
    if ka == kb == "number":
        return DECIMAL
    if ka == kb == "string":
        return STRING
    return None


def _truth(coll: list[Any], what: str) -> bool | None:
    """FHIRPath singleton evaluation of a collection in a boolean context."""
    if not coll:
        return None
    if len(coll) > 1:
        raise TypeError(f"{what}: expected a single boolean, got {len(coll)} items")
    v = coll[0]
    return v if v.__class__ is bool else True


def _flat_get(coll: list[Any], keys: tuple[str, ...]) -> list[Any]:
    out: list[Any] = []
    for x in coll:
        if x.__class__ is dict:
            for k in keys:
                v = x.get(k)
                if v is not None:
                    if v.__class__ is list:
                        out.extend([y for y in v if y is not None])
                    else:
                        out.append(v)
    return out


def _generate_chain(steps: tuple[tuple[str, ...], ...], base: Fn | None) -> Fn:
    """Straight-line Python for a member chain ``a.b.c`` (fast path for the usual single-item focus)."""
    lines = ["def run(f, env):", "    cur = base(f, env)" if base is not None else "    cur = f"]
    for keys in steps:
        lines += ["    if not cur:", "        return cur"]
        if len(keys) == 1:
            lines += [
                "    if len(cur) == 1:",
                "        x = cur[0]",
                "        if x.__class__ is not dict:",
                "            return []",
                f"        v = x.get({keys[0]!r})",
                "        if v is None:",
                "            return []",
                "        if v.__class__ is list:",
                "            cur = [y for y in v if y is not None] if None in v else v",
                "        else:",
                "            cur = [v]",
                "    else:",
                f"        cur = _flat_get(cur, {keys!r})",
            ]
        else:
            lines.append(f"    cur = _flat_get(cur, {keys!r})")
    lines.append("    return cur")
    if base is None and len(steps[0]) == 1:
        # the same chain from one node (the usual case: a column path on the resource or forEach item)
        k0 = steps[0][0]
        lines += ["def run_node(x, env):", "    if x.__class__ is not dict:", "        return []",
                  f"    v = x.get({k0!r})", "    if v is None:", "        return []"]
        if len(steps) == 1:
            lines += ["    if v.__class__ is list:",
                      "        return [y for y in v if y is not None] if None in v else v",
                      "    return [v]"]
        else:
            lines += ["    if v.__class__ is not list:", "        return run_rest([v], env)",
                      "    return run_rest([y for y in v if y is not None] if None in v else v, env)"]
    scope: dict[str, Any] = {"base": base, "_flat_get": _flat_get}
    if base is None and len(steps[0]) == 1 and len(steps) > 1:
        scope["run_rest"] = _generate_chain(steps[1:], None)
    exec("\n".join(lines), scope)  # noqa: S102 - generated from model element names (validated identifiers)
    fn: Fn = scope["run"]
    if "run_node" in scope:
        fn._node = scope["run_node"]  # type: ignore[attr-defined]
    return fn


def _const_fn(val: list[Any]) -> Fn:
    def const(f: list[Any], env: Env) -> list[Any]:
        return val

    const._const = val  # type: ignore[attr-defined]
    return const


def _eq(a: Any, b: Any) -> bool:
    if (a.__class__ is bool) != (b.__class__ is bool):
        return False
    return bool(a == b)


def _unescape(s: str) -> str:
    body = s[1:-1]
    if "\\" not in body:
        return body
    out = []
    i = 0
    esc = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "'": "'", '"': '"', "`": "`", "/": "/", "\\": "\\"}
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            n = body[i + 1]
            if n == "u" and i + 5 < len(body):
                out.append(chr(int(body[i + 2:i + 6], 16)))
                i += 6
                continue
            out.append(esc.get(n, n))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _ident(node: dict[str, Any]) -> str:
    text = str(node.get("text") or node["terminalNodeText"][0])
    return text[1:-1] if text.startswith("`") else text


def _type_name(node: dict[str, Any]) -> str:
    text = str(node.get("text", "")).strip()
    text = text.removeprefix("FHIR.")
    if "." in text or not text:
        raise Unsupported(f"type {text!r}")
    return text.strip("`")


class Compiler:
    """Compiles one expression; ``constants`` maps name → (value, static type)."""

    def __init__(self, constants: dict[str, tuple[Any, SType]]) -> None:
        self.constants = constants

    # ---------------------------------------------------------------- entry
    def compile(self, tree: dict[str, Any], focus: SType) -> tuple[Fn, SType]:
        return self.expr(tree["children"][0], focus)

    def expr(self, node: dict[str, Any], focus: SType) -> tuple[Fn, SType]:
        t = node["type"]
        method = getattr(self, "_" + t, None)
        if method is None:
            raise Unsupported(t)
        res: tuple[Fn, SType] = method(node, focus)
        return res

    # ---------------------------------------------------------------- terms
    def _TermExpression(self, node: dict[str, Any], focus: SType) -> tuple[Fn, SType]:
        return self.expr(node["children"][0], focus)

    def _ParenthesizedTerm(self, node: dict[str, Any], focus: SType) -> tuple[Fn, SType]:
        return self.expr(node["children"][0], focus)

    def _InvocationTerm(self, node: dict[str, Any], focus: SType) -> tuple[Fn, SType]:
        return self.invoke(node["children"][0], focus, None)

    def _LiteralTerm(self, node: dict[str, Any], focus: SType) -> tuple[Fn, SType]:
        lit = node["children"][0]
        lt = lit["type"]
        if lt == "StringLiteral":
            val: list[Any] = [_unescape(lit["text"])]
            st = STRING
        elif lt == "NumberLiteral":
            text = lit["text"]
            val = [float(text)] if "." in text else [int(text)]
            st = DECIMAL if "." in text else INTEGER
        elif lt == "BooleanLiteral":
            val = [lit["text"] == "true"]
            st = BOOLEAN
        elif lt == "NullLiteral":
            val = []
            st = EMPTY_T
        else:
            raise Unsupported(lt)
        return _const_fn(val), st

    def _ExternalConstantTerm(self, node: dict[str, Any], focus: SType) -> tuple[Fn, SType]:
        inner = node["children"][0]["children"][0]
        name = _ident(inner) if inner["type"] == "Identifier" else _unescape(inner["text"])
        if name == "rowIndex":
            return (lambda f, env: [env[1]]), INTEGER
        if name in ("resource", "rootResource"):
            raise Unsupported("%resource")  # the resource type is not known here; rare in views
        if name in self.constants:
            value, st = self.constants[name]
            return _const_fn([value]), st
        raise Unsupported(f"%{name}")

    # ---------------------------------------------------------------- invocations
    def _InvocationExpression(self, node: dict[str, Any], focus: SType) -> tuple[Fn, SType]:
        left, lt = self.expr(node["children"][0], focus)
        return self.invoke(node["children"][1], lt, left)

    def invoke(self, inv: dict[str, Any], focus: SType, left: Fn | None) -> tuple[Fn, SType]:
        kind = inv["type"]
        if kind == "MemberInvocation":
            return self.member(_ident(inv["children"][0]), focus, left)
        if kind == "ThisInvocation":
            if left is not None:
                raise Unsupported("$this after '.'")
            return (lambda f, env: f), focus
        if kind == "FunctionInvocation":
            fn = inv["children"][0]
            name = _ident(fn["children"][0])
            params = fn["children"][1]["children"] if len(fn["children"]) > 1 else []
            return self.function(name, params, focus, left)
        raise Unsupported(kind)

    def member(self, name: str, focus: SType, left: Fn | None) -> tuple[Fn, SType]:
        if focus is None or focus[0] != "complex":
            if focus is not None and focus[0] == "choice":
                raise Unsupported("member of a choice element without ofType()")
            raise Unsupported(f"member {name!r} of unknown type")
        info: tuple[str, Any] | None = MODEL.member(str(focus[1]), name)
        if info is None:
            if name == "resourceType" and MODEL.is_resource(str(focus[1])):
                info = ("primitive", "code")
            else:
                raise Unsupported(f"{focus[1]}.{name} is not in the R4 model")
        if info[0] == "choice":
            choice: Any = info[1]
            path, types = choice
            keys = tuple(name + t[0].upper() + t[1:] for t in types)
            st: SType = ("choice", (path, types, name))
        else:
            keys = (name,)
            st = info
        return self._chain(left, keys), st

    @staticmethod
    def _chain(left: Fn | None, keys: tuple[str, ...]) -> Fn:
        chain = getattr(left, "_chain", None)
        if chain is not None:  # fuse a.b.c into one loop
            steps: tuple[tuple[str, ...], ...] = chain + (keys,)
            base: Fn | None = getattr(left, "_base", None)
        else:
            steps = (keys,)
            base = left
        run = _generate_chain(steps, base)
        run._chain = steps  # type: ignore[attr-defined]
        run._base = base  # type: ignore[attr-defined]
        return run

    def _IndexerExpression(self, node: dict[str, Any], focus: SType) -> tuple[Fn, SType]:
        left, lt = self.expr(node["children"][0], focus)
        idx_fn, it = self.expr(node["children"][1], focus)
        if kind_of(it) != "number":
            raise Unsupported("non-integer index")

        def run(f: list[Any], env: Env) -> list[Any]:
            coll = left(f, env)
            i = idx_fn(f, env)
            if not i:
                return []
            n = int(i[0])
            return coll[n:n + 1] if n >= 0 else []

        return run, lt

    # ---------------------------------------------------------------- functions
    def function(self, name: str, params: list[dict[str, Any]], focus: SType, left: Fn | None) -> tuple[Fn, SType]:
        src: Fn = left if left is not None else (lambda f, env: f)
        n = len(params)

        def arity(*allowed: int) -> None:
            if n not in allowed:
                raise Unsupported(f"{name}() with {n} arguments")

        if name in ("first", "last", "exists", "empty", "count", "not", "getResourceKey", "toString",
                    "lower", "upper", "trim", "length", "lowBoundary", "highBoundary", "hasValue"):
            arity(0) if name != "exists" else arity(0, 1)
        if name == "first":
            def first(f: list[Any], env: Env) -> list[Any]:
                return src(f, env)[:1]

            src_node = getattr(src, "_node", None)
            if src_node is not None:
                first._node = lambda x, env: src_node(x, env)[:1]  # type: ignore[attr-defined]
            return first, focus
        if name == "last":
            return (lambda f, env: src(f, env)[-1:]), focus
        if name == "count":
            return (lambda f, env: [len(src(f, env))]), INTEGER
        if name == "exists" and n == 0:
            return (lambda f, env: [bool(src(f, env))]), BOOLEAN
        if name == "empty":
            return (lambda f, env: [not src(f, env)]), BOOLEAN
        if name == "hasValue":
            if kind_of(focus) not in ("string", "number", "boolean", "date"):
                raise Unsupported("hasValue on a complex type")
            return (lambda f, env: [len(src(f, env)) == 1]), BOOLEAN
        if name in ("where", "exists"):
            arity(1)
            if focus is None or focus[0] == "choice":
                raise Unsupported(f"{name}() on an unknown type")
            cond, _ = self.expr(params[0], focus)
            what = f"{name}()"

            pred = getattr(cond, "_pred", None)
            if pred is not None:
                def where(f: list[Any], env: Env) -> list[Any]:
                    out = []
                    for x in src(f, env):
                        r = pred(x)
                        if r is None:
                            r = _truth(cond([x], env), what)
                        if r is True:
                            out.append(x)
                    return out
            else:
                def where(f: list[Any], env: Env) -> list[Any]:
                    return [x for x in src(f, env) if _truth(cond([x], env), what) is True]

            if name == "where":
                return where, focus
            return (lambda f, env: [bool(where(f, env))]), BOOLEAN
        if name == "not":
            def not_(f: list[Any], env: Env) -> list[Any]:
                b = _truth(src(f, env), "not()")
                return [] if b is None else [not b]
            return not_, BOOLEAN
        if name == "iif":
            arity(2, 3)
            if left is not None:
                raise Unsupported("iif() after '.'")
            crit, _ = self.expr(params[0], focus)
            a, at = self.expr(params[1], focus)
            b, bt = self.expr(params[2], focus) if n == 3 else ((lambda f, env: []), EMPTY_T)

            def iif(f: list[Any], env: Env) -> list[Any]:
                return a(f, env) if _truth(crit(f, env), "iif()") is True else b(f, env)

            return iif, _merge(at, bt)
        if name == "ofType":
            arity(1)
            if focus is None or focus[0] != "choice":
                raise Unsupported("ofType() on a non-choice element")
            tname = _type_name(params[0])
            _path, types, elem = focus[1]
            match = [t for t in types if t.lower() == tname.lower()]
            if not match:
                return (lambda f, env: []), EMPTY_T
            key = elem + match[0][0].upper() + match[0][1:]
            base = getattr(left, "_base", None)
            steps = getattr(left, "_chain", None)
            if steps is None:
                raise Unsupported("ofType() after a non-member expression")
            new = self._rebuild(base, steps[:-1] + ((key,),))
            lowered = tname[0].lower() + tname[1:]
            if lowered in _PRIMITIVES:
                return new, ("primitive", lowered)
            return new, ("complex", match[0])
        if name == "extension":
            arity(1)
            if focus is None or focus[0] != "complex":
                raise Unsupported("extension() on an unknown type")
            url_fn, ut = self.expr(params[0], focus)
            if kind_of(ut) != "string":
                raise Unsupported("extension() with a non-string url")
            exts = self.member("extension", focus, left)[0]

            def extension(f: list[Any], env: Env) -> list[Any]:
                url = url_fn(f, env)
                if not url:
                    return []
                u = url[0]
                return [e for e in exts(f, env) if e.__class__ is dict and e.get("url") == u]

            return extension, ("complex", "Extension")
        if name == "getResourceKey":
            if focus is None or focus[0] != "complex":
                raise Unsupported("getResourceKey() on an unknown type")
            def resource_key(f: list[Any], env: Env) -> list[Any]:
                return [x["id"] for x in src(f, env) if x.__class__ is dict and x.get("id")]

            if left is None:
                def resource_key_node(x: Any, env: Env) -> list[Any]:
                    rid = x.get("id") if x.__class__ is dict else None
                    return [rid] if rid else []

                resource_key._node = resource_key_node  # type: ignore[attr-defined]
            return resource_key, STRING
        if name == "getReferenceKey":
            arity(0, 1)
            if focus is None or focus[0] != "complex":
                raise Unsupported("getReferenceKey() on an unknown type")
            rtype = _type_name(params[0]) if n else None

            def ref_key(f: list[Any], env: Env) -> list[Any]:
                out = []
                for x in src(f, env):
                    if x.__class__ is dict:
                        k = reference_key(x.get("reference"), rtype)
                        if k:
                            out.append(k)
                return out

            return ref_key, STRING
        if name == "join":
            arity(0, 1)
            if kind_of(focus) != "string":
                raise Unsupported("join() of non-strings")
            if n:
                sep_fn, st = self.expr(params[0], focus)
                if kind_of(st) != "string":
                    raise Unsupported("join() separator")
            else:
                def sep_fn(f: list[Any], env: Env) -> list[Any]:
                    return [""]

            def join(f: list[Any], env: Env) -> list[Any]:
                sep = sep_fn(f, env)
                return [(sep[0] if sep else "").join(src(f, env))]

            return join, STRING
        if name == "toString":
            k = kind_of(focus)
            if k not in ("string", "boolean", "date") and not (k == "number" and focus == INTEGER):
                raise Unsupported("toString() of this type")

            def to_string(f: list[Any], env: Env) -> list[Any]:
                out = []
                for v in src(f, env):
                    out.append(("true" if v else "false") if v.__class__ is bool else str(v))
                return out[:1] if len(out) == 1 else out

            return to_string, STRING
        if name in ("lower", "upper", "trim", "length"):
            if kind_of(focus) != "string":
                raise Unsupported(f"{name}() of non-strings")
            ops: dict[str, Callable[[str], Any]] = {"lower": str.lower, "upper": str.upper, "trim": str.strip,
                                                    "length": len}
            op = ops[name]

            def str_fn(f: list[Any], env: Env) -> list[Any]:
                coll = src(f, env)
                if not coll:
                    return []
                if len(coll) > 1:
                    raise TypeError(f"{name}() expects a single string, got {len(coll)} items")
                return [op(coll[0])]

            return str_fn, (INTEGER if name == "length" else STRING)
        if name in ("contains", "startsWith", "endsWith"):
            arity(1)
            if kind_of(focus) != "string":
                raise Unsupported(f"{name}() of non-strings")
            arg, at = self.expr(params[0], focus)
            if kind_of(at) != "string":
                raise Unsupported(f"{name}() argument")
            sops: dict[str, Callable[[str, str], bool]] = {"contains": str.__contains__,
                                                           "startsWith": str.startswith, "endsWith": str.endswith}
            sop = sops[name]

            def str_pred(f: list[Any], env: Env) -> list[Any]:
                coll = src(f, env)
                a = arg(f, env)
                if not coll or not a:
                    return []
                if len(coll) > 1:
                    raise TypeError(f"{name}() expects a single string, got {len(coll)} items")
                return [sop(coll[0], a[0])]

            return str_pred, BOOLEAN
        if name in ("lowBoundary", "highBoundary"):
            k = kind_of(focus)
            if focus is None or k not in ("number", "date"):
                raise Unsupported(f"{name}() of this type")
            ftype = str(focus[1])
            high = name == "highBoundary"

            def bound(f: list[Any], env: Env) -> list[Any]:
                out = []
                for v in src(f, env):
                    b = boundary(v, ftype, high)
                    if b is not None:
                        out.append(float(b) if not isinstance(b, str) else b)
                return out

            return bound, (DECIMAL if k == "number" else focus)
        raise Unsupported(f"function {name}()")

    def _rebuild(self, base: Fn | None, steps: tuple[tuple[str, ...], ...]) -> Fn:
        fn: Fn | None = base
        out: Fn | None = None
        for s in steps:
            out = self._chain(fn, s)
            fn = out
        if out is None:
            raise Unsupported("empty chain")
        return out

    # ---------------------------------------------------------------- operators
    def _binary(self, node: dict[str, Any], focus: SType) -> tuple[Fn, SType, Fn, SType, str]:
        a, at = self.expr(node["children"][0], focus)
        b, bt = self.expr(node["children"][1], focus)
        return a, at, b, bt, node["terminalNodeText"][0]

    def _EqualityExpression(self, node: dict[str, Any], focus: SType) -> tuple[Fn, SType]:
        a, at, b, bt, op = self._binary(node, focus)
        ka, kb = kind_of(at), kind_of(bt)
        if op not in ("=", "!="):
            raise Unsupported(op)
        if ka is None or kb is None or "date" in (ka, kb):
            raise Unsupported("equality of unknown or date types")
        if ka != kb and "empty" not in (ka, kb):
            raise Unsupported("equality of mixed types")
        neg = op == "!="
        const = getattr(b, "_const", None)
        steps = getattr(a, "_chain", None)
        if ka == kb and ka in ("string", "number") and const is not None and len(const) == 1:
            c = const[0]

            def eq_const(f: list[Any], env: Env) -> list[Any]:
                x = a(f, env)
                if not x:
                    return []
                if len(x) == 1:
                    return [(x[0] == c) != neg]
                return [neg]

            if steps is not None and len(steps) == 1 and len(steps[0]) == 1 and getattr(a, "_base", 1) is None:
                key = steps[0][0]

                def pred(x: Any) -> bool | None:
                    """The same test on one item of a where() input (None: not decidable here)."""
                    if x.__class__ is not dict:
                        return None
                    v = x.get(key)
                    if v is None:
                        return None
                    if v.__class__ is list:
                        return None
                    return bool(v == c) != neg

                eq_const._pred = pred  # type: ignore[attr-defined]
            return eq_const, BOOLEAN

        def eq(f: list[Any], env: Env) -> list[Any]:
            x = a(f, env)
            if not x:
                return []
            y = b(f, env)
            if not y:
                return []
            if len(x) != len(y):
                return [neg]
            r = all(_eq(p, q) for p, q in zip(x, y, strict=True))
            return [r != neg]

        return eq, BOOLEAN

    def _InequalityExpression(self, node: dict[str, Any], focus: SType) -> tuple[Fn, SType]:
        a, at, b, bt, op = self._binary(node, focus)
        ka, kb = kind_of(at), kind_of(bt)
        if not ((ka == kb == "number") or (ka == kb == "string")):
            raise Unsupported("comparison of these types")
        cmp: Callable[[Any, Any], bool] = {"<": lambda p, q: p < q, ">": lambda p, q: p > q,
                                           "<=": lambda p, q: p <= q, ">=": lambda p, q: p >= q}[op]

        def ineq(f: list[Any], env: Env) -> list[Any]:
            x = a(f, env)
            y = b(f, env)
            if not x or not y:
                return []
            if len(x) > 1 or len(y) > 1:
                raise TypeError(f"'{op}' expects single values, got {len(x)} and {len(y)}")
            return [cmp(x[0], y[0])]

        return ineq, BOOLEAN

    def _MembershipExpression(self, node: dict[str, Any], focus: SType) -> tuple[Fn, SType]:
        a, at, b, bt, op = self._binary(node, focus)
        if op == "contains":
            a, at, b, bt = b, bt, a, at
        ka, kb = kind_of(at), kind_of(bt)
        if ka is None or kb is None or "date" in (ka, kb) or (ka != kb and "empty" not in (ka, kb)):
            raise Unsupported("membership of unknown, date or mixed types")

        if ka == kb and ka in ("string", "number"):
            def member_fast(f: list[Any], env: Env) -> list[Any]:
                x = a(f, env)
                if not x:
                    return []
                if len(x) > 1:
                    raise TypeError(f"'{op}' expects a single item, got {len(x)}")
                return [x[0] in b(f, env)]

            return member_fast, BOOLEAN

        def member(f: list[Any], env: Env) -> list[Any]:
            x = a(f, env)
            if not x:
                return []
            if len(x) > 1:
                raise TypeError(f"'{op}' expects a single item, got {len(x)}")
            y = b(f, env)
            v = x[0]
            return [any(_eq(v, w) for w in y)]

        return member, BOOLEAN

    def _AndExpression(self, node: dict[str, Any], focus: SType) -> tuple[Fn, SType]:
        a, _, b, _, _ = self._binary(node, focus)

        def and_(f: list[Any], env: Env) -> list[Any]:
            x = _truth(a(f, env), "and")
            if x is False:
                return [False]
            y = _truth(b(f, env), "and")
            if y is False:
                return [False]
            if x is None or y is None:
                return []
            return [True]

        return and_, BOOLEAN

    def _OrExpression(self, node: dict[str, Any], focus: SType) -> tuple[Fn, SType]:
        a, _, b, _, op = self._binary(node, focus)

        def or_(f: list[Any], env: Env) -> list[Any]:
            x = _truth(a(f, env), op)
            if op == "or":
                if x is True:
                    return [True]
                y = _truth(b(f, env), op)
                if y is True:
                    return [True]
                if x is None or y is None:
                    return []
                return [False]
            y = _truth(b(f, env), op)
            if x is None or y is None:
                return []
            return [x != y]

        return or_, BOOLEAN

    def _ImpliesExpression(self, node: dict[str, Any], focus: SType) -> tuple[Fn, SType]:
        a, _, b, _, _ = self._binary(node, focus)

        def implies(f: list[Any], env: Env) -> list[Any]:
            x = _truth(a(f, env), "implies")
            if x is False:
                return [True]
            y = _truth(b(f, env), "implies")
            if y is True:
                return [True]
            if x is None or y is None:
                return []
            return [False]

        return implies, BOOLEAN

    def _UnionExpression(self, node: dict[str, Any], focus: SType) -> tuple[Fn, SType]:
        a, at, b, bt, _ = self._binary(node, focus)

        def union(f: list[Any], env: Env) -> list[Any]:
            out: list[Any] = []
            for v in a(f, env) + b(f, env):
                if not any(_eq(v, w) for w in out):
                    out.append(v)
            return out

        return union, _merge(at, bt)

    def _PolarityExpression(self, node: dict[str, Any], focus: SType) -> tuple[Fn, SType]:
        a, at = self.expr(node["children"][0], focus)
        if kind_of(at) != "number":
            raise Unsupported("polarity of non-numbers")
        if node["terminalNodeText"][0] == "+":
            return a, at
        return (lambda f, env: [-v for v in a(f, env)]), at

    def _arith(self, node: dict[str, Any], focus: SType) -> tuple[Fn, SType]:
        a, at, b, bt, op = self._binary(node, focus)
        ka, kb = kind_of(at), kind_of(bt)
        if op == "&":
            if ka not in ("string", "empty") or kb not in ("string", "empty"):
                raise Unsupported("& of non-strings")

            def concat(f: list[Any], env: Env) -> list[Any]:
                x, y = a(f, env), b(f, env)
                return [(x[0] if x else "") + (y[0] if y else "")]

            return concat, STRING
        if ka == kb == "string" and op == "+":
            def plus(f: list[Any], env: Env) -> list[Any]:
                x, y = a(f, env), b(f, env)
                return [x[0] + y[0]] if x and y else []
            return plus, STRING
        if not (ka == kb == "number") or op not in ("+", "-", "*", "/"):
            raise Unsupported(f"arithmetic {op}")
        ints = at == INTEGER and bt == INTEGER and op != "/"

        def arith(f: list[Any], env: Env) -> list[Any]:
            x, y = a(f, env), b(f, env)
            if not x or not y:
                return []
            if len(x) > 1 or len(y) > 1:
                raise TypeError(f"'{op}' expects single values")
            p, q = x[0], y[0]
            if op == "+":
                return [p + q]
            if op == "-":
                return [p - q]
            if op == "*":
                return [p * q]
            return [] if q == 0 else [p / q]

        return arith, (INTEGER if ints else DECIMAL)

    _AdditiveExpression = _arith
    _MultiplicativeExpression = _arith


def compile_fhirpath(tree: dict[str, Any], focus: SType,
                     constants: dict[str, tuple[Any, SType]]) -> tuple[Fn, SType]:
    """Compile a parsed expression (fhirpathpy AST); raises :class:`Unsupported` outside the subset."""
    return Compiler(constants).compile(tree, focus)
