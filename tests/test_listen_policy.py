"""What a ``subscriptions/listen`` may carry: each requested type decided for its caller.

``listen.narrow`` against real compiled policies: flags as the methods
``subscriptions/listen/<flag>``, URIs as ``resources/read``, unknown keys
refused; ``Honoured.admits`` is the filter the relay applies.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from firewall.gateway.front.listen import Honoured, narrow
from firewall.policy.decision import AllowAll, Caller
from firewall.policy.engine import PolicySet

REQUEST: dict[str, Any] = {
    "toolsListChanged": True, "promptsListChanged": True, "resourcesListChanged": False,
    "resourceSubscriptions": ["file:///srv/docs/a.md", "file:///etc/passwd"],
    "taskIds": ["t1"],
}


def _policy(tmp_path: Path, body: dict[str, Any]) -> PolicySet:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(body))
    return PolicySet([path])


def test_each_type_is_decided_for_the_caller(tmp_path: Path) -> None:
    policy = _policy(tmp_path, {
        "version": "1", "default": "deny",
        "resources": {"file:///srv/docs/*": {}},
        "methods": {"subscriptions/listen/toolsListChanged": {"groups": ["ops"]},
                    "subscriptions/listen/*": {"action": "deny"}},
    })
    honoured, refused = narrow(policy, Caller("ann"), "s", REQUEST)
    assert honoured == Honoured(frozenset(), frozenset({"file:///srv/docs/a.md"}))
    # resourcesListChanged was not asked for (false): neither honoured nor refused.
    assert refused == ["toolsListChanged", "promptsListChanged", "file:///etc/passwd", "taskIds"]
    ops, _ = narrow(policy, Caller("bob", "g", ("ops",)), "s", REQUEST)
    assert ops.flags == frozenset({"toolsListChanged"})
    assert ops.wire() == {"toolsListChanged": True,
                          "resourceSubscriptions": ["file:///srv/docs/a.md"]}


def test_unlisted_types_follow_other_methods(tmp_path: Path) -> None:
    deny = _policy(tmp_path, {"version": "1", "default": "allow", "other_methods": "deny"})
    honoured, _ = narrow(deny, Caller(), "s", REQUEST)
    assert honoured.flags == frozenset()
    allow, _ = narrow(AllowAll(), Caller(), "s", REQUEST)
    assert allow.flags == frozenset({"toolsListChanged", "promptsListChanged"})


def test_a_filter_that_is_no_object_honours_nothing() -> None:
    assert narrow(AllowAll(), Caller(), "s", ["toolsListChanged"]) == (Honoured(), [])
    assert narrow(AllowAll(), Caller(), "s", {"resourceSubscriptions": [1]})[1] == [
        "resourceSubscriptions[0]"]


def test_the_relay_admits_only_honoured_notifications() -> None:
    honoured = Honoured(frozenset({"toolsListChanged"}), frozenset({"res://a"}))
    assert honoured.admits("notifications/tools/list_changed", {})
    assert not honoured.admits("notifications/prompts/list_changed", {})
    assert honoured.admits("notifications/resources/updated", {"uri": "res://a"})
    assert not honoured.admits("notifications/resources/updated", {"uri": "res://b"})
    assert not honoured.admits("notifications/message", {"level": "info"})
