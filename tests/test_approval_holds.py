"""The held-call orchestration (firewall/gateway/approvals/hold.py) without processes.

``Holds`` and ``Held`` alone, then through the mediator, the ``wrap`` front on trio
memory streams (tests/memory_fronts.py) and the HTTP front's ``held_http`` on an ASGI
exchange whose receive and send are memory channels: the behaviours
tests/test_approvals.py and tests/test_approvals_live.py check on real processes
(cancellation withdraws, elicitation through wrap, what a held POST sees), here in the
fast tier. The audit point is in memory; the clock is trio's MockClock where time
matters.
"""

from __future__ import annotations

import json
from typing import Any

import trio
import trio.testing
from memory_fronts import memory_wrap

from firewall.audit.events import DecisionEvent, Event, LifecycleEvent
from firewall.gateway.approvals.hold import NO_DESK, Ended, Held, Holds
from firewall.gateway.front import held_http
from firewall.gateway.http.exchange import Exchange
from firewall.gateway.mediator import Mediator, Routed
from firewall.log import get_logger
from firewall.policy.decision import Decision
from firewall.protocol import jsonrpc, mcp, sse
from tests.test_approval_desk import ALICE, INITIALIZE_ELICITING, STOP, engine
from tests.test_approval_desk import call as vm_call
from tests.test_mediator import Recorder

ASKED = Decision("pending", rule="stop", reason="stops a VM", approval="client")
LIST = {"action": "list"}


def holds(audit: Recorder | None = None, *, elicits: bool = True) -> Holds:
    h = Holds(None, audit, server="vm", session="s1", caller=ALICE,
              log=get_logger(server="vm", session="s1"))
    h.client_elicits = elicits
    return h


def hold(h: Holds, rid: object = 7, token: object = None) -> Held:
    msg = jsonrpc.decode(vm_call(rid, STOP, token))
    assert isinstance(msg, jsonrpc.Message)
    return h.hold(mcp.view(msg, "client"), msg, ASKED, f"s1.{rid}")


class Sink:
    """A front's writer to the client: what mcpwall sent, decoded."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def __call__(self, data: bytes) -> None:
        self.sent.append(json.loads(data))


# -- Holds and Held alone ---------------------------------------------------------
async def test_an_elicited_call_ends_as_the_person_answered_and_its_id_is_freed() -> None:
    audit = Recorder()
    h = holds(audit)
    held = hold(h)
    assert 7 in h and len(h) == 1  # in use from the decision on
    to_client = Sink()
    out: list[Ended] = []

    async def wait() -> None:
        out.append(await held.verdict(to_client))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        (question,) = to_client.sent
        assert question["method"] == "elicitation/create"
        assert "hunter2" not in question["params"]["message"]  # redacted
        assert h.asked(question["id"]) and not h.asked("mcpwall-other")
        stray = jsonrpc.decode(jsonrpc.result_response("not-ours", {}))
        assert isinstance(stray, jsonrpc.Message) and not h.own_answer(stray)
        answer = jsonrpc.decode(jsonrpc.result_response(
            question["id"], {"action": "accept", "content": {"approve": True}}))
        assert isinstance(answer, jsonrpc.Message) and h.own_answer(answer)
    (ended,) = out
    assert ended.recorded_as == "approved" and ended.answered
    assert ended.decision == Decision("allow", rule="stop",
                                      reason="approved by client:agent-alice in the client")
    assert (ended.verdict, ended.via, ended.by) == ("approved", "client", "client:agent-alice")
    assert not h.asked(question["id"])  # answered: a server may not reuse it, nor answer it
    assert 7 in h  # until the mediator recorded the verdict
    await held.end(ended)
    held.release()
    assert 7 not in h and len(h) == 0
    (event,) = audit.of(LifecycleEvent)
    assert event.kind == "approval"
    assert {k: event.detail[k] for k in ("call_id", "verdict", "via", "by", "scope")} == {
        "call_id": "s1.7", "verdict": "approved", "via": "client",
        "by": "client:agent-alice", "scope": "call"}


async def test_a_call_withdrawn_before_its_wait_ends_at_once_unanswered(
        autojump_clock: trio.testing.MockClock) -> None:
    h = holds()
    withdrawn, refused = hold(h, 1), hold(h, 2)
    assert h.withdraw("the client disconnected", 1) == 1
    assert h.withdraw("nobody", 99) == 0
    refused.refuse("mcpwall is shutting down")
    to_client = Sink()
    first = await withdrawn.verdict(to_client)
    second = await refused.verdict(to_client)
    assert to_client.sent == []  # nobody was asked
    assert trio.current_time() == 0  # not the elicitation's deadline: at once
    assert (first.verdict, first.answered, first.recorded_as) == ("withdrawn", False, "rejected")
    assert first.decision.reason == "the client disconnected"
    assert (second.verdict, second.answered) == ("abandoned", True)
    assert second.decision.reason == "mcpwall is shutting down"


async def test_without_a_desk_only_a_client_that_can_be_asked_holds() -> None:
    assert holds(elicits=True).can_hold(ASKED)
    assert not holds(elicits=False).can_hold(ASKED)
    assert not holds(elicits=True).can_hold(Decision("pending", rule="r"))  # a desk rule
    # A front that cannot write before the answer: nobody to ask, refused at once.
    ended = await hold(holds()).verdict(None)
    assert ended.recorded_as == "rejected" and ended.via == "none"
    assert ended.decision.reason is not None and "no approval desk" in ended.decision.reason
    assert "nobody can approve it here" in NO_DESK


async def test_progress_while_the_person_in_the_client_is_asked(
        mock_clock: trio.testing.MockClock) -> None:
    h = holds()
    to_client = Sink()
    held = hold(h, token="tok-9")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(held.verdict, to_client)
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(2):
            mock_clock.jump(h.settings.progress_seconds)
            await trio.testing.wait_all_tasks_blocked()
        question, *progress = to_client.sent
        assert [(p["method"], p["params"]["progress"], p["params"]["progressToken"])
                for p in progress] == [("notifications/progress", 1, "tok-9"),
                                       ("notifications/progress", 2, "tok-9")]
        assert progress[0]["params"]["message"] == "waiting for your answer in the client"
        h.withdraw("the client disconnected")
    # Withdrawn: the question is cancelled, and nothing more is sent.
    assert to_client.sent[-1] == {"jsonrpc": "2.0", "method": "notifications/cancelled",
                                  "params": {"requestId": question["id"],
                                             "reason": "mcpwall: the call no longer waits"}}
    assert len(to_client.sent) == 4


# -- through the mediator ---------------------------------------------------------
class GatedRecorder(Recorder):
    """Holds back the append of an ``approved`` decision until ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = trio.Event()

    async def append(self, event: Event) -> Recorder:
        if isinstance(event, DecisionEvent) and event.decision == "approved":
            await self.gate.wait()
        return await super().append(event)


async def test_a_held_id_stays_in_flight_until_its_verdict_is_recorded_and_answered() -> None:
    audit = GatedRecorder()
    med = Mediator(server="vm", session="s1", caller=ALICE, policy=engine(), audit=audit)
    await med.from_client(INITIALIZE_ELICITING)
    routed = await med.from_client(vm_call(7, STOP), wait=False)
    assert routed.held is not None
    to_client = Sink()
    out: list[Routed] = []

    async def wait() -> None:
        assert routed.held is not None
        out.append(await routed.held.wait(to_client))

    async def same_id_is_refused() -> None:
        again = await med.from_client(vm_call(7, LIST))
        assert again.upstream is None and again.client is not None
        assert b"already in flight" in again.client

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        await same_id_is_refused()  # held
        (question,) = to_client.sent
        await med.from_client(jsonrpc.result_response(
            question["id"], {"action": "accept", "content": {"approve": True}}))
        await trio.testing.wait_all_tasks_blocked()
        assert not out  # the verdict is being recorded (the audit append waits)
        await same_id_is_refused()
        audit.gate.set()
    assert out[0].upstream is not None and out[0].receipt is not None
    await same_id_is_refused()  # forwarded, not answered yet
    await med.from_server(jsonrpc.result_response(7, {"content": []}))
    assert (await med.from_client(vm_call(7, LIST))).upstream is not None  # free again
    assert [e.decision for e in audit.of(DecisionEvent) if e.request_id == "7"] == [
        "pending", "deny", "deny", "approved", "deny", "allow"]


# -- the wrap front, in memory -----------------------------------------------------
async def test_wrap_asks_the_client_and_its_answer_never_reaches_the_child() -> None:
    audit = Recorder()
    med = Mediator(server="vm", session="s1", caller=ALICE, policy=engine(), audit=audit)
    async with memory_wrap(med) as wrap:
        await wrap.client.send(INITIALIZE_ELICITING)
        await wrap.client.answer(0)
        await wrap.client.send(vm_call(1, STOP))
        question = await wrap.client.message()
        assert question["method"] == "elicitation/create"
        await wrap.client.send(jsonrpc.result_response(
            question["id"], {"action": "accept", "content": {"approve": True}}))
        assert "result" in await wrap.client.answer(1)
        await wrap.client.send(vm_call(2, STOP))
        question = await wrap.client.message()
        await wrap.client.send(jsonrpc.result_response(question["id"], {"action": "decline"}))
        refused = await wrap.client.answer(2)
    assert "declined" in json.dumps(refused)
    received = [json.loads(line) for line in wrap.child.received]
    assert [(m.get("method"), m.get("id")) for m in received] == [
        ("initialize", 0), ("tools/call", 1)]  # no answer of the client's, no call 2
    assert [(e.request_id, e.decision) for e in audit.of(DecisionEvent)
            if e.method == "tools/call"] == [
        ("1", "pending"), ("1", "approved"), ("2", "pending"), ("2", "rejected")]


async def test_wrap_a_cancelled_held_call_is_withdrawn_and_never_answered() -> None:
    audit = Recorder()
    med = Mediator(server="vm", session="s1", caller=ALICE, policy=engine(), audit=audit)
    async with memory_wrap(med) as wrap:
        await wrap.client.send(INITIALIZE_ELICITING)
        await wrap.client.answer(0)
        await wrap.client.send(vm_call(1, STOP))
        question = await wrap.client.message()
        await wrap.client.send(jsonrpc.request(mcp.CANCELLED, {"requestId": 1}))
        dropped = await wrap.client.message()  # mcpwall takes its question back
        assert dropped["method"] == "notifications/cancelled"
        assert dropped["params"]["requestId"] == question["id"]
        await wrap.client.send(b'{"jsonrpc":"2.0","id":2,"method":"ping"}')
        await wrap.client.answer(2)
        await wrap.client.close()
        assert await wrap.ended() == 0
    assert all(m.get("id") != 1 for m in wrap.client.seen)  # withdrawn: no answer
    assert all(b'"tools/call"' not in line for line in wrap.child.received)
    assert [(e.decision, e.reason) for e in audit.of(DecisionEvent)
            if e.method == "tools/call"] == [
        ("pending", "stops a VM"), ("rejected", "cancelled by the client")]
    assert audit.of(LifecycleEvent)[-1].detail["verdict"] == "withdrawn"


# -- held_http: a held POST on an ASGI exchange in memory -------------------------------
class Asgi:
    """The ASGI side of one exchange: what the front sent, and a way to disconnect."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.incoming, self._receive = trio.open_memory_channel[dict[str, Any]](1)
        self.exchange = Exchange({"method": "POST", "path": "/mcp/vm", "headers": []},
                                 self._receive.receive, self.send)

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


async def held_post(med: Mediator, asgi: Asgi, *, stream: bool) -> Routed:
    routed = await med.from_client(vm_call(1, STOP, token="t"), wait=False)
    assert routed.held is not None
    return await held_http.hold(asgi.exchange, routed.held, stream=stream, headers=[],
                                keepalive=15)


async def test_a_held_post_streams_its_waiting_and_its_disconnect_withdraws_the_call(
        mock_clock: trio.testing.MockClock) -> None:
    audit = Recorder()
    med = Mediator(server="vm", session="s1", caller=ALICE, policy=engine(), audit=audit)
    await med.from_client(INITIALIZE_ELICITING)
    asgi = Asgi()
    out: list[Routed] = []

    async def post() -> None:
        out.append(await held_post(med, asgi, stream=True))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(post)
        await trio.testing.wait_all_tasks_blocked()
        start = asgi.sent[0]
        assert start["type"] == "http.response.start" and start["status"] == 200
        assert (b"content-type", b"text/event-stream") in start["headers"]
        assert asgi.body().startswith(sse.COMMENT_KEEPALIVE)  # the head went out at once
        assert b"elicitation/create" in asgi.body()
        mock_clock.jump(15)  # progress (every 15 s) and the keepalive comment's turn
        await trio.testing.wait_all_tasks_blocked()
        assert b"notifications/progress" in asgi.body()
        await asgi.incoming.send({"type": "http.disconnect"})
        mock_clock.autojump_threshold = 0  # not withdrawn: the question would expire
    (routed,) = out
    assert routed.upstream is None and routed.client is None  # withdrawn
    assert asgi.exchange.disconnected
    assert await held_http.finish(asgi.exchange, 1, routed, []) is None
    assert [(e.decision, e.reason) for e in audit.of(DecisionEvent)
            if e.method == "tools/call"] == [
        ("pending", "stops a VM"), ("rejected", "the client disconnected")]


async def test_a_json_only_post_cannot_be_asked_and_is_refused_in_one_answer() -> None:
    med = Mediator(server="vm", session="s1", caller=ALICE, policy=engine(), audit=Recorder())
    await med.from_client(INITIALIZE_ELICITING)
    asgi = Asgi()
    routed = await held_post(med, asgi, stream=False)
    assert asgi.sent == []  # nothing reaches a JSON-only client before its answer
    assert routed.upstream is None and routed.client is not None
    final = await held_http.finish(asgi.exchange, 1, routed, [])
    assert final == routed.client
    start, body = asgi.sent
    assert start["status"] == 200 and body["body"] == final and not body["more_body"]
    assert b"no approval desk" in final
