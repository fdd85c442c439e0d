"""The rule type of a config key (a predicate on one value, with what it allows in words) and its
constructors: ``Int``, ``Num``, ``Choice``, ``Lazy``, ``Bool``, ``Str``, ``Null``, ``Map``, ``ListOf``,
combined with ``|``. The keys and their rules are declared in :mod:`.config_keys`."""
import math
import re
from typing import Any, Callable, Optional



class Rule:
    """A predicate on one value with a description of what it allows."""

    def __init__(self, ok: Callable[[Any], bool], allowed):
        self.ok, self._allowed = ok, allowed

    @property
    def allowed(self) -> str:
        """What the rule allows, in words (computed on demand when given as a function)."""
        return self._allowed() if callable(self._allowed) else self._allowed

    def __call__(self, value: Any) -> bool:
        try:
            return bool(self.ok(value))
        except (TypeError, ValueError):
            return False

    def __or__(self, other: "Rule") -> "Rule":
        return Rule(lambda v: self(v) or other(v), lambda: f"{self.allowed} or {other.allowed}")


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def Int(lo: Optional[int] = None, hi: Optional[int] = None, note: str = "") -> Rule:
    bounds = " ".join(x for x in (f">= {lo}" if lo is not None else "", f"<= {hi}" if hi is not None else "") if x)
    return Rule(lambda v: is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi),
                f"an integer {bounds}{note}".rstrip())


def Num(lo: Optional[float] = None, hi: Optional[float] = None, lo_open: bool = False, hi_open: bool = False,
        note: str = "") -> Rule:
    if lo is not None and hi is not None:
        rng = f" in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    elif lo is not None:
        rng = f" {'>' if lo_open else '>='} {lo}"
    elif hi is not None:
        rng = f" {'<' if hi_open else '<='} {hi}"
    else:
        rng = ""

    def ok(v):
        if not is_num(v):
            return False
        if lo is not None and (v <= lo if lo_open else v < lo):
            return False
        return not (hi is not None and (v >= hi if hi_open else v > hi))

    return Rule(ok, f"a finite number{rng}{note}")


def Choice(*values: Any) -> Rule:
    return Rule(lambda v: any(v == c and type(v) is type(c) for c in values),
                "one of " + " | ".join(repr(c) for c in values))


def Lazy(ok: Callable[[Any], bool], allowed: Callable[[], str]) -> Rule:
    """A rule whose allowed set is known only at use (e.g. registered model names: no import here)."""
    return Rule(ok, allowed)


def Bool() -> Rule:
    return Rule(lambda v: isinstance(v, bool), "true or false")


def Str(pattern: Optional[str] = None, allowed: str = "a non-empty string") -> Rule:
    return Rule(lambda v: isinstance(v, str) and v != "" and (pattern is None or re.fullmatch(pattern, v)), allowed)


def Null() -> Rule:
    return Rule(lambda v: v is None, "null")


def Map() -> Rule:
    return Rule(lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v), "a mapping")


def ListOf(item: Rule, length: Optional[int] = None, min_len: int = 0) -> Rule:
    n = f" of {length}" if length is not None else (f" of at least {min_len}" if min_len else "")
    return Rule(lambda v: isinstance(v, (list, tuple)) and (length is None or len(v) == length)
                and len(v) >= min_len and all(item(x) for x in v), lambda: f"a list{n} of ({item.allowed})")


UNIT = Num(0, 1)
