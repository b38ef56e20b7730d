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
3. Name lookup stays flat as tables grow: exact names are one dict lookup
   (behind a bit array in a large table); globs are grouped by their literal
   prefix (or, when they start with a wildcard, their literal suffix) in one
   dict per literal length, so a name costs at most one probe per length
   that occurs, whatever the number of globs; the result per name is
   memoised in bounded caches. Argument rules told apart by one argument's
   values are dispatched on a table (first match kept).
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
from collections.abc import Callable, Mapping, Sequence
from types import CodeType, FunctionType
from typing import Any, Final, Literal, NamedTuple, final
from urllib.parse import unquote, urlsplit, urlunsplit

import msgspec

from firewall.policy.arguments import Check, MatchMemo, compile_conditions
from firewall.policy.counters import (
    CounterSpec,
    CounterUse,
    StateCheck,
    compile_state_checks,
    parse_increment_from,
)
from firewall.policy.decision import (
    ALLOW,
    DENY,
    INVALID_ARGUMENTS,
    PENDING,
    Caller,
    Decision,
)
from firewall.policy.limits import BucketSpec
from firewall.policy.operators import compile_test, describe
from firewall.policy.patterns import DEFAULT_TIMEOUT
from firewall.policy.schema import (
    WINDOW_SECONDS,
    ActionName,
    ApproverName,
    ArgumentRule,
    CheckRule,
    Conditions,
    Counter,
    Limit,
    LoadedPolicy,
    Policy,
    PolicyError,
    StateConditions,
    TargetEntry,
    Test,
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


@final  # the engine tells a Verdict from a Decision by `type(result) is not Verdict`
class Verdict:
    """What a rule concludes: an action, its buckets, and the prebuilt Decision."""

    __slots__ = ("_keys", "_prefix", "action", "buckets", "counted", "decision", "dry_run",
                 "limited_reason", "plain", "plan", "rank", "rule", "single", "state")

    def __init__(self, rule: str, action: ActionName, reason: str | None,
                 buckets: tuple[BucketSpec, ...], dry_run: bool,
                 approval: ApproverName = "desk", *, counters: tuple[CounterUse, ...] = (),
                 state: tuple[StateCheck, ...] = ()) -> None:
        self.rule = rule
        self.action = action
        self.buckets = buckets if action == "allow" else ()
        # Counters (and the state conditions reading them) count calls that
        # may go through: allowed, or held for approval.
        self.counted = counters if action != "deny" else ()
        self.state = state if action != "deny" else ()
        self.dry_run = dry_run
        act = _ACTION_OF[action]
        self.decision = Decision(act, rule=rule, reason=reason,  # type: ignore[arg-type]
                                 dry_run=dry_run and act != ALLOW, approval=approval)
        self.rank = (RANK["limited"] if self.buckets or self.counted else RANK[action]
                     ) if action != "require_approval" else RANK[action]
        self.single: tuple[dict[str, str], int, float, float, float] | None = None
        # With counters and buckets: this verdict with its buckets only, the
        # engine's bucket step before the counters settle.
        self.plain = self
        if self.buckets and (self.counted or self.state):
            self.plain = Verdict(rule, action, reason, buckets, dry_run, approval)
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
        if len(self.buckets) == 1 and not self.counted and not self.state:
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

    __slots__ = ("bound", "check", "denial", "kind")

    def __init__(self, check: Check, rule: str, dry_run: bool,
                 denial: Decision | None = None) -> None:
        self.check = check
        self.denial = denial if denial is not None else Decision(
            INVALID_ARGUMENTS, rule=rule, reason=check.message, dry_run=dry_run)
        # What an evaluator binds for this requirement (see _evaluator).
        self.kind, binding = _binding(check)
        self.bound = (*binding, self.denial)


class CompiledRule:
    """One argument rule of an entry."""

    __slots__ = ("audience", "bound", "index", "require", "rule", "shape", "verdict", "when")

    def __init__(self, rule: str, index: int, audience: Audience | None,
                 when: tuple[Check, ...], require: tuple[Requirement, ...],
                 verdict: Verdict) -> None:
        self.rule = rule
        self.index = index
        self.audience = audience
        self.when = when
        self.require = require
        self.verdict = verdict
        # This rule's part of an evaluator's shape and of what it binds, made
        # here so that building an entry's evaluator (when a call first
        # reaches it) only joins the parts of its rules.
        bound: list[object] = [audience.admits] if audience is not None else []
        kinds: list[str] = []
        for check in when:
            kind, binding = _binding(check)
            kinds.append(kind)
            bound += binding
        for req in require:
            bound += req.bound
        bound.append(_result(verdict))
        self.bound = tuple(bound)
        self.shape: RuleShape = (audience is not None, tuple(kinds),
                                 tuple(req.kind for req in require))


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
    return verdict if verdict.buckets or verdict.counted or verdict.state else verdict.decision


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
    each entry gets a function over that code with its own defaults, joined
    from what its requirements and rules prepared at compile time.
    """
    last = _result(fallback)
    if not require and not rules:
        return lambda args, caller: last
    # The order :func:`_evaluator_code` declares its parameters in.
    bound: list[object] = [type, str]
    for req in require:
        bound += req.bound
    dispatch = _dispatch(rules, last)
    if dispatch is not None:
        bound += dispatch
    for rule in rules:
        bound += rule.bound
    bound.append(last)
    key: Shape = (tuple(req.kind for req in require), tuple(rule.shape for rule in rules),
                  dispatch is not None)
    code = _CODE.get(key)
    if code is None:
        code = _evaluator_code(key)
        if len(_CODE) < _CODE_MAX:
            _CODE[key] = code
    evaluate: Evaluator = FunctionType(code, _NO_GLOBALS, "evaluate", tuple(bound))
    return evaluate


# Kinds of check whose verdict on a string is known from the string alone,
# and the most values a dispatch table holds.
_DECIDABLE: Final = frozenset({"in", "const", "prefix"})
DISPATCH_MAX: Final = 1024


def _dispatch(rules: tuple[CompiledRule, ...], last: Result
              ) -> tuple[str, dict[str, Result]] | None:
    """``(argument, {value: result})`` for entries whose rules are told apart
    by one argument's ``in`` or ``const`` values (the virtualization pack's
    ``action``), else None.

    The evaluator tries the table after the entry's ``require`` checks: a
    string value found there gives the result of the first rule that can
    match it, without testing the rules before it one by one. A value is
    put in the table only if that answer follows from the value alone, in
    first-match order: every earlier rule surely rejects it (a check on that
    argument fails), and the rule that decides surely matches it (no other
    check, no audience, no ``require`` of its own). Any other value, and
    anything but a string, takes the rules in turn as before.
    """
    if len(rules) < 2:
        return None
    counts: dict[str, int] = {}
    for rule in rules:
        for check in rule.when:
            if check.fast is not None and check.fast[0] in ("in", "const"):
                counts[check.fast[1]] = counts.get(check.fast[1], 0) + 1
    if not counts:
        return None
    argument = max(counts, key=lambda k: counts[k])
    if counts[argument] < 2:
        return None
    values: set[str] = set()
    for rule in rules:
        for check in rule.when:
            if check.fast is not None and check.fast[1] == argument:
                kind, _, data = check.fast
                if kind == "in":
                    values.update(data)
                elif kind == "const":
                    values.add(data)
    if len(values) > DISPATCH_MAX:
        return None
    table: dict[str, Result] = {}
    for value in values:
        result = _decided_by(rules, argument, value, last)
        if result is not None:
            table[value] = result
    return (argument, table) if table else None


def _decided_by(rules: tuple[CompiledRule, ...], argument: str, value: str,
                last: Result) -> Result | None:
    """The result of a call whose ``argument`` is ``value``, if that alone decides it."""
    args = {argument: value}
    for rule in rules:
        known = True
        rejects = False
        for check in rule.when:
            fast = check.fast
            if fast is not None and fast[1] == argument and fast[0] in _DECIDABLE:
                if not check.test(args):
                    rejects = True
                    break
            else:
                known = False
        if rejects:
            continue  # whatever else it asks, this rule cannot match
        if not known or rule.audience is not None or rule.require:
            return None
        return _result(rule.verdict)
    return last


def _binding(check: Check) -> tuple[str, tuple[object, ...]]:
    """A check's kind ("call" or a :attr:`Check.fast` kind) and what its code binds."""
    if check.fast is None:
        return "call", (check.test,)
    kind, key, data = check.fast
    return kind, (check.test, key, data)


# An entry's shape: (kinds of its requires, ((has audience, kinds of the whens,
# kinds of the requires) for each rule), whether a dispatch table comes first);
# a kind is "call" or a Check.fast kind.
RuleShape = tuple[bool, tuple[str, ...], tuple[str, ...]]
Shape = tuple[tuple[str, ...], tuple[RuleShape, ...], bool]
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
    requires, rules, dispatch = shape
    params: list[str] = ["type", "str"]
    body: list[str] = []
    for i, kind in enumerate(requires):
        test = _check_code(kind, f"q{i}", params)
        params.append(f"qd{i}")
        body.append(f"    if not {test}: return qd{i}")
    if dispatch:
        params += ("dk", "dd")
        body.append("    if type(v := args.get(dk)) is str and (r := dd.get(v)) is not None: "
                    "return r")
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

    Globs are grouped by their literal prefix (or, when they start with a
    wildcard, their literal suffix), and the groups are kept in one dict per
    literal length. A name costs one probe per length that occurs (``name[:n]``
    for each prefix length ``n``, ``name[-n:]`` for each suffix length), however
    many globs share a length, so the cost follows the shape of the patterns,
    not the size of the table. Globs with no literal at either end (``*x*``,
    ``?``) are few in practice and are tried one by one.

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
                by_suffix.setdefault(suffix, []).append(e)
            else:
                rest.append(e)
        self._exact = {k: tuple(v) for k, v in exact.items()}
        self._exact_bits = _name_bits(self._exact)
        self._exact_mask = len(self._exact_bits or b"") * 8 - 1
        self._prefixes = _by_length(by_prefix, lambda e, literal: e.pattern == literal + "*",
                                    -1)
        self._suffixes = _by_length(by_suffix, lambda e, literal: e.pattern == "*" + literal,
                                    0)
        self._probe = _prober(self._prefixes, self._suffixes)
        self._rest = tuple(rest)
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
        if candidates is None:
            candidates = self._lookup(name)
        # The common cases written out: this runs for every new name.
        if not candidates:
            found = self._none
        elif candidates[0].audience is None:
            first = candidates[0]
            found = first._evaluate if first._evaluate is not None else first.evaluate
        else:
            found = self._resolver(candidates)
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
        bits = self._exact_bits
        if bits is None or bits[(h := hash(name) & self._exact_mask) >> 3] >> (h & 7) & 1:
            exact = self._exact.get(name, ())
        else:
            exact = ()  # surely not an exact name: spare the probe of a large dict
        probe = self._probe
        groups = probe(name) if probe is not None else ()
        rest = self._rest
        if not rest:
            if not groups:
                return exact
            if len(groups) == 1 and not exact and not groups[0][1]:
                return groups[0][0]  # one literal's globs, all matching: already in order
        hits = list(exact)
        for sure, maybe in groups:
            hits += sure
            for e in maybe:
                if e.matches(name):
                    hits.append(e)
        for e in rest:
            if e.matches(name):
                hits.append(e)
        if len(hits) == len(exact):
            return exact
        if len(hits) > 1:
            hits.sort(key=_sort_key)
        return tuple(hits)


# Exact names from which a large dict's probe costs more than a bit test.
BITS_FROM: Final = 4096


def _name_bits(names: Mapping[str, object]) -> bytearray | None:
    """One bit per hash of each name, about sixteen bits per name, or None for
    a few names. A name whose bit is clear is not there: the test touches a
    small array that stays in the CPU's cache, where the probe of a dict of
    many thousands of names mostly misses it (that is what grows with the table).
    """
    if len(names) < BITS_FROM:
        return None
    size = 1 << (len(names) * 8 - 1).bit_length()  # bits, a power of two
    bits = bytearray(size // 8)
    for name in names:
        h = hash(name) & (size - 1)
        bits[h >> 3] |= 1 << (h & 7)
    return bits


# The globs sharing one literal (a prefix, or a suffix): those that match every
# name with that literal (``delete_*`` for ``delete_``), and the others, which
# must still be matched (``delete_*_vm``).
Group = tuple[tuple["CompiledEntry", ...], tuple["CompiledEntry", ...]]


# Per literal length: the length; the characters the literals of that length
# have at their inner end (the last one of a prefix, the first one of a
# suffix); and the groups by literal.
Lengths = tuple[tuple[int, frozenset[str], dict[str, Group]], ...]


def _by_length(groups: dict[str, list[CompiledEntry]], sure: Callable[[CompiledEntry, str], bool],
               inner: int) -> Lengths:
    """The groups by literal length, shortest first; ``inner`` is the index of
    the inner end of a literal (-1 for prefixes, 0 for suffixes).

    A name is probed at a length only if its character there is one of the
    inner ends: one character test, against a few bytes that stay in the
    CPU's cache, spares most probes of a large dict, which would not."""
    tables: dict[int, dict[str, Group]] = {}
    for literal in sorted(groups):
        group = groups[literal]
        surely = [sure(e, literal) for e in group]
        # A fresh copy of the literal: built one after another, the keys of a
        # large table sit together in memory, and a probe that misses the CPU's
        # caches costs more than the probe itself.
        key = (literal + "\x00")[:-1]
        tables.setdefault(len(literal), {})[key] = (
            tuple(e for e, y in zip(group, surely, strict=True) if y),
            tuple(e for e, y in zip(group, surely, strict=True) if not y))
    return tuple((length, frozenset(k[inner] for k in table), table)
                 for length, table in sorted(tables.items()))


# Probes the groups of one index: ``probe(name)`` is the tuple of the groups
# whose literal the name starts (prefixes) or ends (suffixes) with.
Probe = Callable[[str], tuple[Group, ...]]
_PROBE_CODE: Final[dict[tuple[tuple[int, bool], ...], CodeType]] = {}


def _prober(prefixes: Lengths, suffixes: Lengths) -> Probe | None:
    """The probe of an index's globs, or None when it has none.

    Like an entry's evaluator, it is straight-line code over parameter
    defaults: per literal length, a length test, a one-character test and a
    dict probe; no loop, no tuple unpacking. It runs for every name the
    index has not met before, so its cost is what a new name costs.
    """
    if not prefixes and not suffixes:
        return None
    shape: list[tuple[int, bool]] = []  # (signed length: < 0 for a suffix, one character)
    bound: list[object] = []
    for sign, tables in ((1, prefixes), (-1, suffixes)):
        for length, chars, groups in tables:
            one = len(chars) == 1
            shape.append((sign * length, one))
            bound += (next(iter(chars)) if one else chars, groups.get)
    key = tuple(shape)
    code = _PROBE_CODE.get(key)
    if code is None:
        code = _probe_code(key)
        if len(_PROBE_CODE) < _CODE_MAX:
            _PROBE_CODE[key] = code
    probe: Probe = FunctionType(code, _NO_GLOBALS, "probe", (*bound, len))
    return probe


def _probe_code(shape: tuple[tuple[int, bool], ...]) -> CodeType:
    params: list[str] = []
    body = ["    size = len(name)", "    hit = ()"]
    for i, (signed, one) in enumerate(shape):
        length = abs(signed)
        at, cut = (length - 1, f"name[:{length}]") if signed > 0 else (-length, f"name[{-length}:]")
        test = f"name[{at}] == c{i}" if one else f"name[{at}] in c{i}"
        params += (f"c{i}", f"g{i}")
        body.append(f"    if size >= {length} and {test} and (g := g{i}({cut})) is not None:\n"
                    "        hit += (g,)")
    body.append("    return hit")
    source = f"def probe(name, {', '.join(params)}, len):\n" + "\n".join(body)
    module = compile(source, "<policy index>", "exec")
    code: CodeType = next(c for c in module.co_consts if isinstance(c, CodeType))
    return code


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
    """The fleet-wide table plus one table per server that has its own policy.

    ``counters`` are the bucket shapes by name; ``windowed`` the counters
    (:mod:`firewall.policy.counters`) by name.
    """

    def __init__(self, fleet: ServerTable, servers: dict[str, ServerTable],
                 files: tuple[LoadedPolicy, ...], counters: dict[str, BucketSpec],
                 memo: MatchMemo | None = None,
                 windowed: dict[str, CounterSpec] | None = None) -> None:
        self.fleet = fleet
        self.servers = servers
        self.files = files
        self.counters = counters
        self.windowed = windowed or {}
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


class _Windowed:
    """Counters by name, declared anywhere in the files compiled together:
    every use of a name must agree on its window and scope."""

    def __init__(self) -> None:
        self.specs: dict[str, CounterSpec] = {}
        self._where: dict[str, str] = {}

    def declare(self, counter: Counter, where: str) -> CounterSpec:
        name = counter.counter
        if "\x1f" in name:
            raise PolicyError(f"{where}.counter: a name without control characters")
        spec = CounterSpec(name, counter.scope, counter.window)
        known = self.specs.get(name)
        if known is None:
            self.specs[name] = spec
            self._where[name] = where
        elif known != spec:
            raise PolicyError(
                f"{where}: counter {name!r} is per {spec.scope}, by {spec.window}, here but "
                f"per {known.scope}, by {known.window}, at {self._where[name]}; rules "
                "sharing a counter share one total and must agree")
        return spec

    def scan(self, loaded: LoadedPolicy) -> None:
        """Declare every counter of a file (before any ``require_state`` reads one)."""
        every = loaded.policy.all_tools
        if every is not None:
            for i, c in enumerate(every.counters):
                self.declare(c, f"{loaded.source}: all_tools.counters[{i}]")
        for kind in KINDS:
            table: Mapping[str, ToolEntry | TargetEntry] = getattr(loaded.policy, kind)
            for key, entry in table.items():
                where = f"{loaded.source}: {join_key(kind, key)}"
                for i, c in enumerate(entry.counters):
                    self.declare(c, f"{where}.counters[{i}]")
                if isinstance(entry, ToolEntry):
                    for j, r in enumerate(entry.rules):
                        for i, c in enumerate(r.counters):
                            self.declare(c, f"{where}.rules[{j}].counters[{i}]")

    def uses(self, counters: Sequence[Counter], where: str) -> tuple[CounterUse, ...]:
        out = []
        for i, c in enumerate(counters):
            here = f"{where}.counters[{i}]"
            spec = self.declare(c, here)
            path = (parse_increment_from(c.increment_from, here)
                    if c.increment_from is not None else None)
            per = f"{c.max} per {c.window}" if c.max is not None else f"per {c.window}"
            reason = c.reason or f"counter {c.counter} ({per}, per {c.scope}) reached"
            out.append(CounterUse(spec, c.max, c.increment, path, reason,
                                  c.increment_from or ""))
        return tuple(out)

    def state(self, conditions: StateConditions, where: str) -> tuple[StateCheck, ...]:
        if not conditions:
            return ()
        return compile_state_checks(conditions, self.specs, where)


def _merge_uses(own: tuple[CounterUse, ...], outer: tuple[CounterUse, ...]
                ) -> tuple[CounterUse, ...]:
    # A call adds to a counter once, even if the rule and its entry both name it
    # (the rule's own use wins).
    out: dict[str, CounterUse] = {}
    for use in (*own, *outer):
        out.setdefault(use.spec.counter, use)
    return tuple(out.values())


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


class _EveryTool(NamedTuple):
    """What ``all_tools`` adds to every tool entry (and to tools none names)."""

    checks: tuple[Requirement, ...] = ()
    buckets: tuple[BucketSpec, ...] = ()
    uses: tuple[CounterUse, ...] = ()
    state: tuple[StateCheck, ...] = ()


_NOTHING: Final = _EveryTool()

_condition_encoder: Final = msgspec.json.Encoder()


class _Compiler:
    """Compiles the files that apply to one server into a :class:`ServerTable`."""

    def __init__(self, counters: _Counters, dry_run: bool,
                 windowed: _Windowed | None = None,
                 regex_timeout: float = DEFAULT_TIMEOUT) -> None:
        self.counters = counters
        self.windowed = windowed or _Windowed()
        self.dry_run = dry_run
        self.regex_timeout = regex_timeout
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
            checks = self._checks[key] = compile_conditions(conditions, where, self.memo,
                                                            self.regex_timeout)
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
        every_tool = self._all_tools([f for _, f in layered])
        entries: dict[Kind, list[CompiledEntry]] = {k: [] for k in KINDS}
        for file_index, (layer, loaded) in enumerate(layered):
            for kind in KINDS:
                entries[kind].extend(self._entries(kind, loaded, (layer, file_index), default,
                                                   every_tool))
        entries["tools"].extend(self._hidden([f for _, f in layered], every_dry))
        if any(every_tool) and default_action != "deny":
            entries["tools"].append(self._every_tool_entry(default, every_tool))
        indexes = {k: NameIndex(v, other if k == "methods" else _result(default))
                   for k, v in entries.items()}
        return ServerTable(server, indexes, default, other,
                           tuple(f.source for _, f in layered))

    def _hidden(self, files: Sequence[LoadedPolicy], dry: bool) -> list[CompiledEntry]:
        """One deny entry per name in any file's ``hide``, ahead of every other
        entry (``"*"`` hides every tool); tools/list drops what they deny."""
        out: list[CompiledEntry] = []
        seen: set[str] = set()
        for loaded in files:
            for i, name in enumerate(loaded.policy.hide):
                if not name.strip():
                    raise PolicyError(f"{loaded.source}: hide[{i}]: entry must not be empty")
                if name in seen:
                    continue
                seen.add(name)
                reason = ("every tool is hidden by policy (hide: \"*\")" if name == "*"
                          else f"Tool {json_quote(name)} is hidden by policy")
                verdict = Verdict("hide", "deny", reason, (), dry or loaded.policy.dry_run)
                entry = CompiledEntry(
                    kind="tools", pattern="*" if name == "*" else literal_glob(name),
                    rule="hide", source=loaded.source, audience=None, require=(), rules=(),
                    fallback=verdict, fallback_is_default=False, order=(0, 0, 0))
                entry.sort_key = (-1, 0, 0, 0, 0, 0)  # before anything else
                out.append(entry)
        return out

    def _all_tools(self, files: Sequence[LoadedPolicy]) -> _EveryTool:
        """The checks, buckets, counters and state conditions of every file's
        ``all_tools``, for every tool call."""
        checks: list[Requirement] = []
        buckets: tuple[BucketSpec, ...] = ()
        uses: tuple[CounterUse, ...] = ()
        state: tuple[StateCheck, ...] = ()
        for loaded in files:
            every = loaded.policy.all_tools
            if every is None:
                continue
            where = f"{loaded.source}: all_tools"
            dry = loaded.policy.dry_run or self.dry_run
            checks += self._check_rules(every.checks, "all_tools", f"{where}.checks", dry)
            buckets = _merge(buckets, _buckets(every.limits, self.counters, "all_tools",
                                               loaded.source, where))
            uses = _merge_uses(uses, self.windowed.uses(every.counters, where))
            state += self.windowed.state(every.require_state, f"{where}.require_state")
        return _EveryTool(tuple(checks), buckets, uses, state)

    def _every_tool_entry(self, default: Verdict, every_tool: _EveryTool) -> CompiledEntry:
        """Tools no entry names, under a default that lets them through, still
        pass ``all_tools``: its checks, then the default, under its limits and
        counters."""
        verdict = Verdict("default", default.action, default.decision.reason,
                          every_tool.buckets, default.dry_run, counters=every_tool.uses,
                          state=every_tool.state)
        entry = CompiledEntry(kind="tools", pattern="*", rule="all_tools", source="all_tools",
                              audience=None, require=every_tool.checks, rules=(),
                              fallback=verdict, fallback_is_default=True, order=(2, 0, 0))
        entry.sort_key = (2, 0, 0, 0, 0, 0)  # after every entry of a file
        return entry

    def _entries(self, kind: Kind, loaded: LoadedPolicy, order: tuple[int, int],
                 default: Verdict, every_tool: _EveryTool) -> list[CompiledEntry]:
        policy: Policy = loaded.policy
        table: Mapping[str, ToolEntry | TargetEntry] = getattr(policy, kind)
        prefix = f"{policy.name}:" if policy.name else ""
        out = []
        extra = every_tool if kind == "tools" else _NOTHING
        for i, (key, entry) in enumerate(table.items()):
            if not key:
                raise PolicyError(f"{loaded.source}: {kind}: an empty name matches nothing")
            rule_id = f"{prefix}{kind}.{key}"
            where = f"{loaded.source}: {join_key(kind, key)}"
            dry = entry.dry_run or policy.dry_run or self.dry_run
            out.append(self._entry(kind, key, entry, rule_id, where, loaded.source, dry,
                                   (*order, i), default, extra))
        return out

    def _entry(self, kind: Kind, key: str, entry: ToolEntry | TargetEntry, rule_id: str,
               where: str, source: str, dry: bool, order: tuple[int, int, int],
               default: Verdict,
               extra: _EveryTool | None = None) -> CompiledEntry:
        extra = extra if extra is not None else _NOTHING
        limits = entry.limits
        if isinstance(entry, ToolEntry) and entry.rate_limit is not None:
            limits = [*limits, Limit(max=entry.rate_limit.max, window=entry.rate_limit.window,
                                     counter=f"{rule_id}.rate_limit@{source}", scope="session")]
        buckets = _merge(_buckets(limits, self.counters, rule_id, source, where), extra.buckets)
        # The tool's own counters first, then every tool's (Intercept's order).
        uses = _merge_uses(self.windowed.uses(entry.counters, where), extra.uses)
        state = (self.windowed.state(entry.require_state, f"{where}.require_state")
                 + extra.state)
        rules: tuple[CompiledRule, ...] = ()
        require: tuple[Requirement, ...] = ()
        action = entry.action
        if isinstance(entry, ToolEntry):
            if isinstance(entry.require, dict):
                require = self._require(entry.require, rule_id, f"{where}.require", dry)
            else:
                require = self._tests(entry.require, False, f"{rule_id}.require",
                                      f"{where}.require", dry)
            require += self._tests(entry.deny_if, True, f"{rule_id}.deny_if",
                                   f"{where}.deny_if", dry)
            require += self._check_rules(entry.checks, rule_id, f"{where}.checks", dry)
            require += extra.checks
            rules = tuple(self._rule(r, i, rule_id, source, where, buckets, dry,
                                     entry.approval, uses, state)
                          for i, r in enumerate(entry.rules))
        fallback_is_default = action is None and bool(rules)
        if fallback_is_default:
            fallback = Verdict(
                rule_id, default.action,
                f"no rule of {rule_id} matches these arguments; "
                f"the policy default is {default.action}",
                buckets, dry or default.dry_run, counters=uses, state=state)
        else:
            fallback = Verdict(rule_id, action or "allow", entry.reason, buckets, dry,
                               _approver(entry.approval, action, where, bool(rules)),
                               counters=uses, state=state)
        return CompiledEntry(
            kind=kind, pattern=key, rule=rule_id, source=source,
            audience=_audience(entry.principals, entry.groups, entry.grants),
            require=require, rules=rules, fallback=fallback,
            fallback_is_default=fallback_is_default, order=order,
        )

    def _tests(self, tests: Sequence[Test], deny_when_true: bool, rule: str, where: str,
               dry: bool) -> tuple[Requirement, ...]:
        """PolicyLayer's ``require`` (each test must hold) or ``deny_if`` (the
        call is denied when a test holds) lists: one check per test, in order."""
        out = []
        for i, test in enumerate(tests):
            check = compile_test(test, f"{where}[{i}]", timeout=self.regex_timeout)
            if deny_when_true:
                check = Check(_negate(check.test), check.argument, check.condition,
                              f"deny_if {describe(test)} holds")
            reason = test.reason or check.message
            out.append(Requirement(check, f"{rule}[{i}]", dry,
                                   Decision(DENY, rule=f"{rule}[{i}]", reason=reason,
                                            dry_run=dry)))
        return tuple(out)

    def _check_rules(self, checks: Sequence[CheckRule], entry_rule: str, where: str,
                dry: bool) -> tuple[Requirement, ...]:
        """``checks``: one check each, in order; the first that fails denies."""
        out = []
        for i, rule in enumerate(checks):
            at = f"{where}[{i}]"
            rule_id = f"{entry_rule}.checks[{rule.name if rule.name else i}]"
            if rule.deny and (rule.require or rule.deny_if):
                raise PolicyError(f"{at}: \"deny\": true takes no require or deny_if")
            timeout = self.regex_timeout
            required = tuple(compile_test(t, f"{at}.require[{j}]", timeout=timeout).test
                             for j, t in enumerate(rule.require))
            denied = tuple(compile_test(t, f"{at}.deny_if[{j}]", timeout=timeout).test
                           for j, t in enumerate(rule.deny_if))
            test = _check_rule_test(rule.deny, required, denied)
            words = ([describe(t) for t in rule.require] if rule.require else []) + (
                [f"not ({' and '.join(describe(t) for t in rule.deny_if)})"]
                if rule.deny_if else [])
            message = (f"{rule_id}: denies every call" if rule.deny
                       else f"{rule_id}: {' and '.join(words) or 'nothing'} does not hold")
            check = Check(test, "", "check", message)
            out.append(Requirement(check, rule_id, dry,
                                   Decision(DENY, rule=rule_id, reason=rule.reason or message,
                                            dry_run=dry)))
        return tuple(out)

    def _require(self, conditions: Conditions, rule: str, where: str,
                 dry: bool) -> tuple[Requirement, ...]:
        if not conditions:
            return ()
        return tuple(Requirement(c, rule, dry) for c in self._conditions(conditions, where))

    def _rule(self, r: ArgumentRule, i: int, entry_id: str, source: str, entry_where: str,
              entry_buckets: tuple[BucketSpec, ...], entry_dry: bool,
              entry_approval: ApproverName | None = None,
              entry_uses: tuple[CounterUse, ...] = (),
              entry_state: tuple[StateCheck, ...] = ()) -> CompiledRule:
        label = r.name if r.name else str(i)
        rule_id = f"{entry_id}.rules[{label}]"
        where = f"{entry_where}.rules[{i}]"
        dry = r.dry_run or entry_dry
        buckets = _merge(entry_buckets, _buckets(r.limits, self.counters, rule_id, source, where))
        uses = _merge_uses(self.windowed.uses(r.counters, where), entry_uses)
        state = entry_state + self.windowed.state(r.require_state, f"{where}.require_state")
        return CompiledRule(
            rule_id, i, _audience(r.principals, r.groups, r.grants),
            self._conditions(r.when, f"{where}.when"),
            self._require(r.require, rule_id, f"{where}.require", dry),
            Verdict(rule_id, r.action, r.reason, buckets, dry,
                    _approver(r.approval or entry_approval, r.action, where,
                              r.approval is None), counters=uses, state=state),
        )


def _check_rule_test(deny: bool, required: tuple[Callable[[dict[str, Any]], bool], ...],
                     denied: tuple[Callable[[dict[str, Any]], bool], ...]
                     ) -> Callable[[dict[str, Any]], bool]:
    """Whether a call passes one ``checks`` entry."""
    if deny:
        return lambda args: False
    if not denied:
        if len(required) == 1:
            return required[0]
        return lambda args: all(t(args) for t in required)
    return lambda args: (all(t(args) for t in required)
                         and not all(t(args) for t in denied))


def _negate(test: Callable[[dict[str, Any]], bool]) -> Callable[[dict[str, Any]], bool]:
    return lambda args: not test(args)


def literal_glob(name: str) -> str:
    """A glob matching exactly ``name``: ``a*b`` -> ``a[*]b``."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def json_quote(name: str) -> str:
    """``"name"``, as Go's %q would (near enough for names)."""
    return _condition_encoder.encode(name).decode()


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
                     *, dry_run: bool = False,
                     regex_timeout: float = DEFAULT_TIMEOUT) -> CompiledPolicy:
    """Compile fleet-wide policies and per-server ones; raise :class:`PolicyError`.

    ``dry_run`` marks every decision as recorded-but-not-enforced.
    ``regex_timeout`` (seconds) bounds one match of any policy pattern
    (:mod:`firewall.policy.patterns`).
    """
    with collector_paused():
        return _compile_policies(fleet, servers or {}, dry_run, regex_timeout)


def _compile_policies(fleet: Sequence[LoadedPolicy], servers: Mapping[str, Sequence[LoadedPolicy]],
                      dry_run: bool, regex_timeout: float = DEFAULT_TIMEOUT) -> CompiledPolicy:
    counters = _Counters()
    windowed = _Windowed()
    for loaded in (*fleet, *(f for own in servers.values() for f in own)):
        windowed.scan(loaded)
    compiler = _Compiler(counters, dry_run, windowed, regex_timeout)
    fleet_table = compiler.table(None, (), fleet)
    tables = {name: compiler.table(name, own, fleet) for name, own in servers.items()}
    files: list[LoadedPolicy] = list(fleet)
    for own in servers.values():
        files.extend(f for f in own if f not in files)
    return CompiledPolicy(fleet_table, tables, tuple(files),
                          {name: spec for name, (spec, _) in counters.specs.items()},
                          compiler.memo, windowed.specs)


def compile_policy(policy: Policy, *, source: str = "<policy>",
                   dry_run: bool = False,
                   regex_timeout: float = DEFAULT_TIMEOUT) -> CompiledPolicy:
    """Compile one fleet-wide policy object (tests, ``explain``, benchmarks)."""
    return compile_policies([LoadedPolicy(policy, source, "")], dry_run=dry_run,
                            regex_timeout=regex_timeout)
