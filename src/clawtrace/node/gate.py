"""What the local socket asks before a tool call: the tool policy, then the release's tool hooks.

``NodePolicy`` decides with the environment's bundle and the release's own
policy; a call they allow is then put to the running release's
``before_tool_call`` hooks (clawtrace.node.hooks). A hook's refusal is the
final answer: recorded as a ``policy`` deny with rule ``hook:<path>``, and
sent to the agent like any other refusal. Without a release (or with one
that has no hooks) this is NodePolicy unchanged.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Final

from clawtrace.node.hooks import ToolHooks
from clawtrace.node.local import Interim
from clawtrace.node.policy import AuthorizeRequest, NodePolicy, Ruling, parse_request

HOOK_RULE_PREFIX: Final = "hook:"
# Approvals asked without waiting (HTTP clients poll them): their requests,
# so the hooks can be asked once a person approves, and the hooks' answers.
KEPT_APPROVALS: Final = 256

HooksSource = Callable[[], ToolHooks | None]
DenialRecorder = Callable[[Ruling, AuthorizeRequest], None]


class HookedPolicy:
    """The policy endpoint of the local socket (``clawtrace.node.local.PolicyEndpoint``)."""

    def __init__(self, policy: NodePolicy, hooks: HooksSource, record_denial: DenialRecorder) -> None:
        self.policy = policy
        self.hooks = hooks
        self.record_denial = record_denial
        self._asked: OrderedDict[str, AuthorizeRequest] = OrderedDict()
        self._answered: OrderedDict[str, dict[str, Any]] = OrderedDict()

    async def authorize(self, body: dict[str, Any], interim: Interim | None = None) -> dict[str, Any]:
        answer = await self.policy.authorize(body, interim)
        decision = answer.get("decision")
        if decision == "require_approval":
            approval_id = answer.get("approval_id")
            if isinstance(approval_id, str):
                _keep(self._asked, approval_id, parse_request(body))
            return answer
        if decision != "allow":
            return answer
        return await self._ask_hooks(parse_request(body), answer)

    async def approval_state(self, approval_id: str, wait: float) -> dict[str, Any] | None:
        state = await self.policy.approval_state(approval_id, wait)
        if state is None or state.get("decision") != "allow":
            return state
        answered = self._answered.get(approval_id)
        if answered is not None:
            return answered
        request = self._asked.pop(approval_id, None)
        if request is None:
            return state  # asked before this node agent started, or long ago
        answer = await self._ask_hooks(request, state)
        _keep(self._answered, approval_id, answer)
        return answer

    def status(self) -> dict[str, Any]:
        hooks = self.hooks()
        return {**self.policy.status(), "tool_hooks": hooks.paths if hooks is not None else []}

    async def _ask_hooks(self, request: AuthorizeRequest, allowed: Mapping[str, Any]) -> dict[str, Any]:
        hooks = self.hooks()
        if not hooks:
            return dict(allowed)
        verdict = await hooks.before(request.tool, request.args, request.call_id)
        if verdict.allowed:
            return dict(allowed)
        command = allowed.get("command")
        ruling = Ruling(
            decision="deny",
            tool=request.tool,
            rule=f"{HOOK_RULE_PREFIX}{verdict.hook}",
            reason=verdict.reason,
            command=command if isinstance(command, str) else "",
            call_id=request.call_id,
        )
        self.record_denial(ruling, request)
        return ruling.answer()


def _keep(kept: OrderedDict[str, Any], key: str, value: Any) -> None:
    kept[key] = value
    while len(kept) > KEPT_APPROVALS:
        kept.popitem(last=False)
