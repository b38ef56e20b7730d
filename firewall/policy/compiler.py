"""Policy files -> rule tables, built once per load or reload.

Rules this module keeps:

1. Everything that can be computed before a call is computed here: argument
   checks, bucket shapes, and the :class:`Decision` objects returned for
   allow, deny, approval and bad arguments. The engine only looks up, calls
   closures and does bucket arithmetic.
2. Precedence is most-specific-wins, and it is a total order fixed at compile
   time (:attr:`CompiledEntry.sort_key`):

   a. an exact name beats any glob;
   b. among globs, more literal characters (outside ``*``, ``?``, ``[...]``) win;
   c. ties go to the more restrictive entry (one that can deny, then one that
      can require approval, then one with limits, then a plain allow);
   d. then an entry of the server's own policy beats one of the fleet-wide policy;
   e. then file order, then order within the file.

   The first entry in that order whose audience (principals, groups, grants)
   admits the caller decides; inside it, argument ``rules`` are tried in order
   and the first whose ``when`` holds decides (first match).
3. Name lookup stays flat as tables grow: exact names are one dict lookup;
   globs are grouped by their literal prefix (or, when they start with a
   wildcard, their literal suffix) in a sorted list, so a name costs one
   binary search rather than a probe per glob; the result per name is
   memoised in bounded caches.
4. A compiled table is immutable once built, except for what it remembers:
   the per-name caches, entry evaluators and glob matchers built on first
   use, and the verdicts of ``pattern`` checks. Each only ever holds what the
   immutable entries imply, is bounded, and dies with the table: reload
   builds a new one.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from types import CodeType, FunctionType
from typing import Any, Final, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

import msgspec

from firewall.policy.arguments import Check, MatchMemo, compile_conditions
from firewall.policy.decision import (
    ALLOW,
    DENY,
    INVALID_ARGUMENTS,
    PENDING,
    Caller,
    Decision,
)
from firewall.policy.limits import BucketSpec
from firewall.policy.schema import (
    WINDOW_SECONDS,
    ActionName,
    ApproverName,
    ArgumentRule,
    Conditions,
    Limit,
    LoadedPolicy,
    Policy,
    PolicyError,
    TargetEntry,
    ToolEntry,
    collector_paused,
    join_key,
)

Kind = Literal["tools", "prompts", "resources", "methods"]
KINDS: Final[tuple[Kind, ...]] = ("tools", "prompts", "resources", "methods")

# How restrictive an outcome is; ties between equally specific entries go to
# the highest.
RANK: Final = {"allow": 0, "limited": 1, "require_approval": 2, "deny": 3}
_ACTION_OF: Final = {"allow": ALLOW, "deny": DENY, "require_approval": PENDING}
_GLOB_CHARS: Final = frozenset("*?[")
CACHE_MAX: Final = 65536
# Bucket keys a verdict remembers (one per grant, session... it has seen).
KEYS_MAX: Final = 4096

# Methods that always pass: the protocol cannot work without them.
PASS_METHODS: Final = frozenset({"initialize", "ping", "resources/unsubscribe"})

# The order of scope values the engine passes at call time.
SCOPE_INDEX: Final = {"grant": 0, "agent": 1, "session": 2, "server": 3, "global": 4}


class Audience:
    """Who a rule applies to: any listed principal, grant or group."""

    __slots__ = ("grants", "groups", "principals")

    def __init__(self, principals: Sequence[str], groups: Sequence[str],
                 grants: Sequence[str]) -> None:
        self.principals = frozenset(principals)
        self.groups = frozenset(groups)
        self.grants = frozenset(grants)

    def admits(self, caller: Caller) -> bool:
        return (caller.principal in self.principals or caller.grant in self.grants
                or not self.groups.isdisjoint(caller.groups))

    def __repr__(self) -> str:
        parts = [f"{k}={sorted(getattr(self, k))}" for k in ("principals", "groups", "grants")
                 if getattr(self, k)]
        return f"Audience({', '.join(parts)})"


def _audience(principals: Sequence[str], groups: Sequence[str],
              grants: Sequence[str]) -> Audience | None:
    if not (principals or groups or grants):
        return None
    return Audience(principals, groups, grants)


class Verdict:
    """What a rule concludes: an action, its buckets, and the prebuilt Decision."""

    __slots__ = ("_keys", "_prefix", "action", "buckets", "decision", "dry_run", "limited_reason",
                 "plan", "rank", "rule", "single")

    def __init__(self, rule: str, action: ActionName, reason: str | None,
                 buckets: tuple[BucketSpec, ...], dry_run: bool,
                 approval: ApproverName = "desk") -> None:
        self.rule = rule
        self.action = action
        self.buckets = buckets if action == "allow" else ()
        self.dry_run = dry_run
        act = _ACTION_OF[action]
        self.decision = Decision(act, rule=rule, reason=reason,  # type: ignore[arg-type]
                                 dry_run=dry_run and act != ALLOW, approval=approval)
        self.rank = RANK["limited"] if self.buckets else RANK[action]
        self.single: tuple[dict[str, str], int, float, float, float] | None = None
        if not self.buckets:  # most verdicts: skip the bucket bookkeeping
            self.plan: tuple[tuple[str, int, BucketSpec], ...] = ()
            self.limited_reason = "rate limit: "
            return
        # (key prefix, index of the scope value, spec) per bucket: what the
        # engine needs to build bucket keys with one concatenation each.
        self.plan = tuple((b.key_prefix, SCOPE_INDEX[b.scope], b) for b in self.buckets)
        # The common case, one bucket, unpacked for the engine's fast path:
        # (bucket key by scope value, scope index, capacity, refill rate, window).
        # The keys are remembered so that a call neither builds nor hashes one.
        if len(self.buckets) == 1:
            b = self.buckets[0]
            self._keys: dict[str, str] = {}
            self._prefix = b.key_prefix
            self.single = (self._keys, SCOPE_INDEX[b.scope], float(b.capacity), b.rate,
                           b.window)
        self.limited_reason = "rate limit: " + "; ".join(
            f"{b.counter} ({b.capacity} per {_window_text(b.window)}, per {b.scope})"
            for b in self.buckets
        )

    def bucket_key(self, value: str) -> str:
        """The key of the single bucket for one scope value (remembered, boundedly)."""
        key = self._prefix + value
        if len(self._keys) < KEYS_MAX:
            self._keys[value] = key
        return key

    def __repr__(self) -> str:
        return f"Verdict({self.rule!r}, {self.action!r}, buckets={len(self.buckets)})"


def _window_text(seconds: float) -> str:
    for name, value in WINDOW_SECONDS.items():
        if value == seconds:
            return name
    return f"{seconds:g}s"


class Requirement:
    """A ``require`` check and the Decision returned when it fails."""

    __slots__ = ("check", "denial")

    def __init__(self, check: Check, rule: str, dry_run: bool) -> None:
        self.check = check
        self.denial = Decision(INVALID_ARGUMENTS, rule=rule, reason=check.message,
                               dry_run=dry_run)


class CompiledRule:
    """One argument rule of an entry."""

    __slots__ = ("audience", "index", "require", "rule", "verdict", "when")

    def __init__(self, rule: str, index: int, audience: Audience | None,
                 when: tuple[Check, ...], require: tuple[Requirement, ...],
                 verdict: Verdict) -> None:
        self.rule = rule
        self.index = index
        self.audience = audience
        self.when = when
        self.require = require
        self.verdict = verdict


class CompiledEntry:
    """A tool, prompt, resource or method entry, ready to evaluate."""

    __slots__ = ("_evaluate", "_matches", "audience", "exact", "fallback",
                 "fallback_is_default", "kind", "literals", "pattern", "rank", "require",
                 "rule", "rules", "sort_key", "source")

    def __init__(self, *, kind: Kind, pattern: str, rule: str, source: str,
                 audience: Audience | None, require: tuple[Requirement, ...],
                 rules: tuple[CompiledRule, ...], fallback: Verdict,
                 fallback_is_default: bool, order: tuple[int, int, int]) -> None:
        self.kind = kind
        self.pattern = pattern
        self.rule = rule
        self.source = source
        self.audience = audience
        self.require = require
        self.rules = rules
        self.fallback = fallback
        self.fallback_is_default = fallback_is_default
        self.exact = not is_glob(pattern)
        self.literals = literal_count(pattern)
        self.rank = max([fallback.rank, *(r.verdict.rank for r in rules)])
        self._matches: Callable[[str], bool] | None = None
        self.sort_key = (0 if self.exact else 1, -self.literals, -self.rank, *order)

        self._evaluate: Evaluator | None = None

    @property
    def matches(self) -> Callable[[str], bool]:
        """``matches(name)``: whether this entry's name or glob matches ``name``
        (built on first use: the index rarely needs it)."""
        if self._matches is None:
            self._matches = self.pattern.__eq__ if self.exact else _glob_matcher(self.pattern)
        return self._matches

    @property
    def evaluate(self) -> Evaluator:
        """``evaluate(args, caller)``: this entry's result for a caller it admits.

        Built on first use, so a large table pays only for the entries that
        calls reach."""
        if self._evaluate is None:
            self._evaluate = _evaluator(self.require, self.rules, self.fallback)
        return self._evaluate

    def __repr__(self) -> str:
        return f"CompiledEntry({self.rule!r})"


# What an entry's evaluator returns: a prebuilt Decision, or a Verdict whose
# buckets the engine must debit first.
Result = Decision | Verdict
Evaluator = Callable[[dict[str, Any], Caller], Result]


def _result(verdict: Verdict) -> Result:
    return verdict if verdict.buckets else verdict.decision


def _evaluator(require: tuple[Requirement, ...], rules: tuple[CompiledRule, ...],
               fallback: Verdict) -> Evaluator:
    """One function per entry: the hot path's version of ``Engine._evaluate``
    (which keeps the trace for explain; the property tests hold both to the
    reference interpreter).

    The function is straight-line code, one ``if`` per check, with every
    check, Decision and Verdict bound as a parameter default (a local): no
    loop, no tuple unpacking, no global lookup. The commonest checks on a
    string argument (``in``, ``const``, ``prefix``, a remembered ``pattern``:
    :attr:`Check.fast`) are written inline, so that they cost no call; any
    other value goes to the check's own test. The code depends only on the
    entry's shape (which checks where), so it is compiled once per shape and
    each entry gets a function over that code with its own defaults.
    """
    last = _result(fallback)
    if not require and not rules:
        return lambda args, caller: last
    # The order :func:`_evaluator_code` declares its parameters in.
    bound: list[object] = [type, str]
    requires: list[str] = []
    for req in require:
        requires.append(_bind(req.check, bound))
        bound.append(req.denial)
    rule_shapes: list[tuple[bool, tuple[str, ...], tuple[str, ...]]] = []
    for rule in rules:
        if rule.audience is not None:
            bound.append(rule.audience.admits)
        whens = tuple(_bind(check, bound) for check in rule.when)
        rule_requires: list[str] = []
        for req in rule.require:
            rule_requires.append(_bind(req.check, bound))
            bound.append(req.denial)
        bound.append(_result(rule.verdict))
        rule_shapes.append((rule.audience is not None, whens, tuple(rule_requires)))
    bound.append(last)
    key: Shape = (tuple(requires), tuple(rule_shapes))
    code = _CODE.get(key)
    if code is None:
        code = _evaluator_code(key)
        if len(_CODE) < _CODE_MAX:
            _CODE[key] = code
    evaluate: Evaluator = FunctionType(code, _NO_GLOBALS, "evaluate", tuple(bound))
    return evaluate


def _bind(check: Check, bound: list[object]) -> str:
    """Append what a check's code needs to ``bound``; return its kind."""
    if check.fast is None:
        bound.append(check.test)
        return "call"
    kind, key, data = check.fast
    bound += (check.test, key, data)
    return kind


# An entry's shape: (kinds of its requires, ((has audience, kinds of the whens,
# kinds of the requires) for each rule)); a kind is "call" or a Check.fast kind.
Shape = tuple[tuple[str, ...], tuple[tuple[bool, tuple[str, ...], tuple[str, ...]], ...]]
_CODE: Final[dict[Shape, CodeType]] = {}
_CODE_MAX: Final = 4096
_NO_GLOBALS: Final[dict[str, Any]] = {"__builtins__": {}}

# A check inline, by kind: ``t`` is its test, ``k`` the argument, ``d`` the
# data (Check.fast), ``v`` and ``r`` scratch locals. A value that is not a
# string goes to ``t``, which alone knows about missing, null, optional and
# nullable. ``type`` and ``str`` are parameters too (there are no globals).
_INLINE: Final = {
    "in": "({v} in {d} if type({v} := args.get({k})) is str else {t}(args))",
    "const": "({v} == {d} if type({v} := args.get({k})) is str else {t}(args))",
    "prefix": "({v}.startswith({d}) if type({v} := args.get({k})) is str else {t}(args))",
    "memo": "((r if (r := {d}.get({v})) is not None else {t}(args)) "
            "if type({v} := args.get({k})) is str else {t}(args))",
}


def _check_code(kind: str, name: str, params: list[str]) -> str:
    """The expression of one check named ``name``; its parameters go to ``params``."""
    if kind == "call":
        params.append(f"t{name}")
        return f"t{name}(args)"
    params += (f"t{name}", f"k{name}", f"d{name}")
    return _INLINE[kind].format(t=f"t{name}", k=f"k{name}", d=f"d{name}", v="v")


def _evaluator_code(shape: Shape) -> CodeType:
    """The code of ``evaluate(args, caller, *bound)`` for one entry shape, where
    ``bound`` is what :func:`_evaluator` passes as defaults, in its order."""
    requires, rules = shape
    params: list[str] = ["type", "str"]
    body: list[str] = []
    for i, kind in enumerate(requires):
        test = _check_code(kind, f"q{i}", params)
        params.append(f"qd{i}")
        body.append(f"    if not {test}: return qd{i}")
    reachable = True
    for j, (audience, whens, rule_requires) in enumerate(rules):
        tests = []
        if audience:
            params.append(f"a{j}")
            tests.append(f"a{j}(caller)")
        tests += [_check_code(kind, f"w{j}_{k}", params) for k, kind in enumerate(whens)]
        indent = "        " if tests else "    "
        lines = [f"    if {' and '.join(tests)}:"] if tests else []
        for k, kind in enumerate(rule_requires):
            test = _check_code(kind, f"r{j}_{k}", params)
            params.append(f"rd{j}_{k}")
            lines.append(f"{indent}if not {test}: return rd{j}_{k}")
        params.append(f"res{j}")
        lines.append(f"{indent}return res{j}")
        if reachable:
            body += lines
        reachable = reachable and bool(tests)  # after an unconditional rule, nothing is
    params.append("last")
    if reachable:
        body.append("    return last")
    source = f"def evaluate(args, caller, {', '.join(params)}):\n" + "\n".join(body)
    module = compile(source, "<policy entry>", "exec")
    code: CodeType = next(c for c in module.co_consts if isinstance(c, CodeType))
    return code


def is_glob(pattern: str) -> bool:
    """True when a key holds ``*``, ``?`` or ``[``."""
    return not _GLOB_CHARS.isdisjoint(pattern)


def literal_count(pattern: str) -> int:
    """Characters a glob matches literally: ``delete_*`` -> 7, ``a[bc]?`` -> 1."""
    if "[" not in pattern:
        return len(pattern) - pattern.count("*") - pattern.count("?")
    count = 0
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "[":
            end = pattern.find("]", i + 2)
            if end != -1:
                i = end + 1
                continue
            count += 1
        elif c not in "*?":
            count += 1
        i += 1
    return count


def _glob_matcher(pattern: str) -> Callable[[str], bool]:
    """A match function; ``a*b`` needs no regex, others compile theirs on first use
    (so a 100,000-rule table does not pay for regexes no name ever reaches)."""
    if pattern.count("*") == 1 and not _GLOB_CHARS.intersection(pattern.replace("*", "")):
        head, tail = pattern.split("*")
        least = len(head) + len(tail)
        return lambda name: (len(name) >= least and name.startswith(head)
                             and name.endswith(tail))
    compiled: list[re.Pattern[str]] = []

    def match(name: str) -> bool:
        if not compiled:
            compiled.append(re.compile(fnmatch.translate(pattern), re.DOTALL))
        return compiled[0].match(name) is not None

    return match


def _literal_prefix(pattern: str) -> str:
    for i, c in enumerate(pattern):
        if c in _GLOB_CHARS:
            return pattern[:i]
    return pattern


def _literal_suffix(pattern: str) -> str:
    for i in range(len(pattern) - 1, -1, -1):
        if pattern[i] in "*?[]":
            return pattern[i + 1:]
    return pattern


def normalise_uri(uri: str) -> str:
    """A URI with its path percent-decoded and ``.``/``..`` segments resolved, so
    ``file:///data/../etc/passwd`` is matched as ``file:///etc/passwd``."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    path = unquote(parts.path)
    if path:
        norm = posixpath.normpath(path)
        if path.endswith("/") and norm != "/":
            norm += "/"
        if not path.startswith("/"):
            norm = norm.lstrip("/")
        elif norm.startswith("//"):
            norm = "/" + norm.lstrip("/")
        path = norm
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


class NameIndex:
    """Entries of one kind, looked up by name. ``candidates(name)`` returns the
    entries whose pattern matches, in precedence order; ``resolve(name)`` the
    evaluator that decides for that name (first admitting candidate, else the
    fallback result).

    Finding the globs whose literal prefix starts a name costs one binary
    search, whatever the number of prefixes: in sorted order, every literal
    prefix of ``name`` is a prefix of the last prefix sorting at or before
    ``name`` (anything between a prefix of ``name`` and ``name`` itself starts
    with that prefix). Each sorted prefix links to the longest other prefix it
    starts with, so the lookup walks that short chain. Literal suffixes work
    the same on reversed strings.

    Both per-name maps (``cache`` and ``resolved``) are bounded: when one
    reaches ``cache_max`` names it is emptied and refills with the names in
    use. They belong to this index, so a reload, which builds new indexes,
    starts with empty ones.
    """

    def __init__(self, entries: Sequence[CompiledEntry], fallback: Result,
                 cache_max: int = CACHE_MAX) -> None:
        self.entries = tuple(sorted(entries, key=lambda e: e.sort_key))
        exact: dict[str, list[CompiledEntry]] = {}
        by_prefix: dict[str, list[CompiledEntry]] = {}
        by_suffix: dict[str, list[CompiledEntry]] = {}
        rest: list[CompiledEntry] = []
        for e in self.entries:
            if e.exact:
                exact.setdefault(e.pattern, []).append(e)
                continue
            prefix = _literal_prefix(e.pattern)
            if prefix:
                by_prefix.setdefault(prefix, []).append(e)
                continue
            suffix = _literal_suffix(e.pattern)
            if suffix:
                by_suffix.setdefault(suffix[::-1], []).append(e)
            else:
                rest.append(e)
        self._exact = {k: tuple(v) for k, v in exact.items()}
        self._prefixes, self._prefix_links = _links(
            by_prefix, lambda e, literal: e.pattern == literal + "*")
        self._suffixes, self._suffix_links = _links(
            by_suffix, lambda e, literal: e.pattern == "*" + literal[::-1])
        self._rest = tuple(rest)
        self._has_globs = bool(by_prefix or by_suffix or rest)
        self.fallback = fallback
        self.cache_max = cache_max
        self.cache: dict[str, tuple[CompiledEntry, ...]] = {}
        self.resolved: dict[str, Evaluator] = {}
        self._none: Evaluator = lambda args, caller: fallback

    def __len__(self) -> int:
        return len(self.entries)

    def candidates(self, name: str) -> tuple[CompiledEntry, ...]:
        """Entries matching ``name``, best first (see the precedence rules above)."""
        found = self.cache.get(name)
        if found is not None:
            return found
        found = self._lookup(name)
        if len(self.cache) >= self.cache_max:
            self.cache = {}
        self.cache[name] = found
        return found

    def resolve(self, name: str) -> Evaluator:
        """The evaluator deciding for ``name``: ``resolve(name)(args, caller)`` is
        the first admitting candidate's result, or ``fallback`` when none admits."""
        found = self.resolved.get(name)
        if found is not None:
            return found
        candidates = self.cache.get(name)
        found = self._resolver(self._lookup(name) if candidates is None else candidates)
        if len(self.resolved) >= self.cache_max:
            self.resolved = {}
        self.resolved[name] = found
        return found

    def _resolver(self, candidates: tuple[CompiledEntry, ...]) -> Evaluator:
        if not candidates:
            return self._none
        if candidates[0].audience is None:
            return candidates[0].evaluate
        fallback = self.fallback
        steps = tuple((e.audience.admits if e.audience is not None else None, e.evaluate)
                      for e in candidates)

        def evaluate(args: dict[str, Any], caller: Caller) -> Result:
            for admits, entry_evaluate in steps:
                if admits is None or admits(caller):
                    return entry_evaluate(args, caller)
            return fallback

        return evaluate

    def _lookup(self, name: str) -> tuple[CompiledEntry, ...]:
        exact = self._exact.get(name, ())
        if not self._has_globs:
            return exact
        hits = list(exact)
        # Written out for both sides rather than a helper: this runs for every new name.
        keys = self._prefixes
        if keys:
            links = self._prefix_links
            i = bisect_right(keys, name) - 1
            while i >= 0:
                literal, sure, maybe, parent = links[i]
                if name.startswith(literal):
                    hits.extend(sure)
                    for e in maybe:
                        if e.matches(name):
                            hits.append(e)
                i = parent
        keys = self._suffixes
        if keys:
            links = self._suffix_links
            probe = name[::-1]
            i = bisect_right(keys, probe) - 1
            while i >= 0:
                literal, sure, maybe, parent = links[i]
                if probe.startswith(literal):
                    hits.extend(sure)
                    for e in maybe:
                        if e.matches(name):
                            hits.append(e)
                i = parent
        for e in self._rest:
            if e.matches(name):
                hits.append(e)
        if len(hits) > len(exact) and len(hits) > 1:
            hits.sort(key=_sort_key)
        return tuple(hits)


# Per sorted literal (a prefix, or a reversed suffix): the literal; its globs
# that match every name starting with it (``delete_*`` for ``delete_``); its
# other globs; and the index of the longest other literal it starts with, or -1.
# Once a name starts with a literal, it starts with all of that one's parents.
Link = tuple[str, tuple["CompiledEntry", ...], tuple["CompiledEntry", ...], int]


def _links(groups: dict[str, list[CompiledEntry]],
           sure: Callable[[CompiledEntry, str], bool]) -> tuple[list[str], list[Link]]:
    keys = sorted(groups)
    links: list[Link] = []
    stack: list[int] = []  # indexes of the literals the current key starts with
    for i, key in enumerate(keys):
        while stack and not key.startswith(keys[stack[-1]]):
            stack.pop()
        group = groups[key]
        surely = [sure(e, key) for e in group]
        links.append((key, tuple(e for e, y in zip(group, surely, strict=True) if y),
                      tuple(e for e, y in zip(group, surely, strict=True) if not y),
                      stack[-1] if stack else -1))
        stack.append(i)
    return keys, links


def _sort_key(entry: CompiledEntry) -> tuple[int, ...]:
    return entry.sort_key


class ServerTable:
    """Everything that decides for one server: four indexes and the defaults."""

    def __init__(self, server: str | None, indexes: dict[Kind, NameIndex], default: Verdict,
                 other_methods: Decision, sources: tuple[str, ...]) -> None:
        self.server = server
        self.tools = indexes["tools"]
        self.prompts = indexes["prompts"]
        self.resources = indexes["resources"]
        self.methods = indexes["methods"]
        self.default = default
        self.default_result = _result(default)
        self.other_methods = other_methods
        self.sources = sources

    def index(self, kind: Kind) -> NameIndex:
        return {"tools": self.tools, "prompts": self.prompts, "resources": self.resources,
                "methods": self.methods}[kind]


class CompiledPolicy:
    """The fleet-wide table plus one table per server that has its own policy."""

    def __init__(self, fleet: ServerTable, servers: dict[str, ServerTable],
                 files: tuple[LoadedPolicy, ...], counters: dict[str, BucketSpec],
                 memo: MatchMemo | None = None) -> None:
        self.fleet = fleet
        self.servers = servers
        self.files = files
        self.counters = counters
        # The budget this table's pattern checks remember their verdicts in.
        self.memo = memo if memo is not None else MatchMemo(0)

    def table(self, server: str) -> ServerTable:
        """The table deciding for ``server`` (the fleet table if it has no policy)."""
        return self.servers.get(server, self.fleet)

    @property
    def digests(self) -> dict[str, str]:
        """``{source: sha256}`` of every file compiled in: for policy_load audit events."""
        return {f.source: f.sha256 for f in self.files}


class _Counters:
    """Bucket shapes by counter name: rules naming one counter must agree."""

    def __init__(self) -> None:
        self.specs: dict[str, tuple[BucketSpec, str]] = {}

    def spec(self, limit: Limit, default_counter: str, where: str) -> BucketSpec:
        window = (WINDOW_SECONDS[limit.window] if isinstance(limit.window, str)
                  else float(limit.window))
        counter = limit.counter or default_counter
        if not counter or "\x1f" in counter:
            raise PolicyError(f"{where}.counter: expected a non-empty name")
        spec = BucketSpec(counter, limit.scope, limit.max, window)
        known = self.specs.get(counter)
        if known is None:
            self.specs[counter] = (spec, where)
        elif (known[0].capacity, known[0].window) != (spec.capacity, spec.window):
            raise PolicyError(
                f"{where}: counter {counter!r} is {spec.capacity} per {window:g}s here but "
                f"{known[0].capacity} per {known[0].window:g}s at {known[1]}; "
                "rules sharing a counter share one bucket and must agree"
            )
        return spec


def _buckets(limits: Sequence[Limit], counters: _Counters, rule: str, source: str,
             where: str) -> tuple[BucketSpec, ...]:
    # An unnamed counter belongs to its place alone: the rule id, made unique
    # across files by the file it comes from.
    if not limits:
        return ()
    return tuple(counters.spec(lim, f"{rule}#{i}@{source}", f"{where}.limits[{i}]")
                 for i, lim in enumerate(limits))


def _merge(a: tuple[BucketSpec, ...], b: tuple[BucketSpec, ...]) -> tuple[BucketSpec, ...]:
    # One call takes one token per bucket, even if two levels name the same one.
    out: dict[tuple[str, str], BucketSpec] = {}
    for spec in (*a, *b):
        out.setdefault((spec.counter, spec.scope), spec)
    return tuple(out.values())


_condition_encoder: Final = msgspec.json.Encoder()


class _Compiler:
    """Compiles the files that apply to one server into a :class:`ServerTable`."""

    def __init__(self, counters: _Counters, dry_run: bool) -> None:
        self.counters = counters
        self.dry_run = dry_run
        self.memo = MatchMemo()
        # Compiled checks by the conditions' JSON: large tables repeat the
        # same conditions over and over, and checks are immutable.
        self._checks: dict[bytes, tuple[Check, ...]] = {}

    def _conditions(self, conditions: Conditions, where: str) -> tuple[Check, ...]:
        if not conditions:
            return ()
        key = _condition_encoder.encode(conditions)
        checks = self._checks.get(key)
        if checks is None:
            checks = self._checks[key] = compile_conditions(conditions, where, self.memo)
        return checks

    def table(self, server: str | None, own: Sequence[LoadedPolicy],
              fleet: Sequence[LoadedPolicy]) -> ServerTable:
        layered = [(0, f) for f in own] + [(1, f) for f in fleet]
        stated = [f.policy.default for _, f in layered if f.policy.default is not None]
        default_action: ActionName = max(stated, key=lambda a: RANK[a]) if stated else "deny"
        every_dry = (bool(layered) and all(f.policy.dry_run for _, f in layered)) or self.dry_run
        default = Verdict("default", default_action,
                          f"no rule matches; the policy default is {default_action}", (),
                          every_dry)
        others = [f.policy.other_methods for _, f in layered if f.policy.other_methods]
        other_action: ActionName = "deny" if "deny" in others else "allow"
        other = Verdict("other_methods", other_action,
                        "method not listed in the policy; other_methods is " + other_action,
                        (), every_dry).decision
        entries: dict[Kind, list[CompiledEntry]] = {k: [] for k in KINDS}
        for file_index, (layer, loaded) in enumerate(layered):
            for kind in KINDS:
                entries[kind].extend(self._entries(kind, loaded, (layer, file_index), default))
        indexes = {k: NameIndex(v, other if k == "methods" else _result(default))
                   for k, v in entries.items()}
        return ServerTable(server, indexes, default, other,
                           tuple(f.source for _, f in layered))

    def _entries(self, kind: Kind, loaded: LoadedPolicy, order: tuple[int, int],
                 default: Verdict) -> list[CompiledEntry]:
        policy: Policy = loaded.policy
        table: Mapping[str, ToolEntry | TargetEntry] = getattr(policy, kind)
        prefix = f"{policy.name}:" if policy.name else ""
        out = []
        for i, (key, entry) in enumerate(table.items()):
            if not key:
                raise PolicyError(f"{loaded.source}: {kind}: an empty name matches nothing")
            rule_id = f"{prefix}{kind}.{key}"
            where = f"{loaded.source}: {join_key(kind, key)}"
            dry = entry.dry_run or policy.dry_run or self.dry_run
            out.append(self._entry(kind, key, entry, rule_id, where, loaded.source, dry,
                                   (*order, i), default))
        return out

    def _entry(self, kind: Kind, key: str, entry: ToolEntry | TargetEntry, rule_id: str,
               where: str, source: str, dry: bool, order: tuple[int, int, int],
               default: Verdict) -> CompiledEntry:
        buckets = _buckets(entry.limits, self.counters, rule_id, source, where)
        rules: tuple[CompiledRule, ...] = ()
        require: tuple[Requirement, ...] = ()
        action = entry.action
        if isinstance(entry, ToolEntry):
            require = self._require(entry.require, rule_id, f"{where}.require", dry)
            rules = tuple(self._rule(r, i, rule_id, source, where, buckets, dry,
                                     entry.approval)
                          for i, r in enumerate(entry.rules))
        fallback_is_default = action is None and bool(rules)
        if fallback_is_default:
            fallback = Verdict(
                rule_id, default.action,
                f"no rule of {rule_id} matches these arguments; "
                f"the policy default is {default.action}",
                buckets, dry or default.dry_run)
        else:
            fallback = Verdict(rule_id, action or "allow", entry.reason, buckets, dry,
                               _approver(entry.approval, action, where, bool(rules)))
        return CompiledEntry(
            kind=kind, pattern=key, rule=rule_id, source=source,
            audience=_audience(entry.principals, entry.groups, entry.grants),
            require=require, rules=rules, fallback=fallback,
            fallback_is_default=fallback_is_default, order=order,
        )

    def _require(self, conditions: Conditions, rule: str, where: str,
                 dry: bool) -> tuple[Requirement, ...]:
        if not conditions:
            return ()
        return tuple(Requirement(c, rule, dry) for c in self._conditions(conditions, where))

    def _rule(self, r: ArgumentRule, i: int, entry_id: str, source: str, entry_where: str,
              entry_buckets: tuple[BucketSpec, ...], entry_dry: bool,
              entry_approval: ApproverName | None = None) -> CompiledRule:
        label = r.name if r.name else str(i)
        rule_id = f"{entry_id}.rules[{label}]"
        where = f"{entry_where}.rules[{i}]"
        dry = r.dry_run or entry_dry
        buckets = _merge(entry_buckets, _buckets(r.limits, self.counters, rule_id, source, where))
        return CompiledRule(
            rule_id, i, _audience(r.principals, r.groups, r.grants),
            self._conditions(r.when, f"{where}.when"),
            self._require(r.require, rule_id, f"{where}.require", dry),
            Verdict(rule_id, r.action, r.reason, buckets, dry,
                    _approver(r.approval or entry_approval, r.action, where,
                              r.approval is None)),
        )


def _approver(approval: ApproverName | None, action: ActionName | None, where: str,
              inherited: bool) -> ApproverName:
    """Who approves a verdict; ``approval`` on a verdict that is not
    require_approval is an error (unless it is an entry's, inherited by rules)."""
    if approval is None:
        return "desk"
    if action != "require_approval" and not inherited:
        raise PolicyError(f"{where}.approval: applies to \"action\": \"require_approval\" "
                          f"only (this verdict is {action or 'allow'})")
    return approval


def compile_policies(fleet: Sequence[LoadedPolicy],
                     servers: Mapping[str, Sequence[LoadedPolicy]] | None = None,
                     *, dry_run: bool = False) -> CompiledPolicy:
    """Compile fleet-wide policies and per-server ones; raise :class:`PolicyError`.

    ``dry_run`` marks every decision as recorded-but-not-enforced.
    """
    with collector_paused():
        return _compile_policies(fleet, servers or {}, dry_run)


def _compile_policies(fleet: Sequence[LoadedPolicy], servers: Mapping[str, Sequence[LoadedPolicy]],
                      dry_run: bool) -> CompiledPolicy:
    counters = _Counters()
    compiler = _Compiler(counters, dry_run)
    fleet_table = compiler.table(None, (), fleet)
    tables = {name: compiler.table(name, own, fleet) for name, own in servers.items()}
    files: list[LoadedPolicy] = list(fleet)
    for own in servers.values():
        files.extend(f for f in own if f not in files)
    return CompiledPolicy(fleet_table, tables, tuple(files),
                          {name: spec for name, (spec, _) in counters.specs.items()},
                          compiler.memo)


def compile_policy(policy: Policy, *, source: str = "<policy>",
                   dry_run: bool = False) -> CompiledPolicy:
    """Compile one fleet-wide policy object (tests, ``explain``, benchmarks)."""
    return compile_policies([LoadedPolicy(policy, source, "")], dry_run=dry_run)
