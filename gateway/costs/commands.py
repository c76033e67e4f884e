"""`/moa cost`, `/moa budget` and the pre-turn budget check: the gateway's side of gateway.costs.reports and
gateway.costs.budgets.

Turns cost reports and budget lines into plain text the adapters render; periods are computed in
`[gateway] timezone`.

Admission holds under concurrency: the check and the reservation of the admitted turn's
estimate are one step (one lock), and every check counts what the running turns of the same
budget still hold, so twenty turns fired at once in twenty chats are judged one after another.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from zoneinfo import ZoneInfo

from adapters.contract import InboundMessage
from adapters.figures import format_total
from gateway.commands import Command, SendDigest, ShowBudget, ShowCost
from gateway.config import Config
from gateway.costs.budgets import budget_scope, budget_status, check_budget, describe_budget, effective_limits
from gateway.costs.reports import CostReport, cost_report
from moa_core.pricing import price_call
from moa_core.settings import Preset, ProviderSettings
from moa_core.values import Usage

# A slot without max_tokens is assumed to write this much when a turn's cost is estimated.
DEFAULT_OUTPUT_TOKENS = 1024


def render_report(title: str, report: CostReport) -> str:
    lines = [
        f"{title} — {report.period} from {report.start:%Y-%m-%d %H:%M %Z}: "
        f"{format_total(report.priced_usd, report.unknown_calls)}, "
        f"{report.turns} turn{'s' if report.turns != 1 else ''}, {report.tokens.total:,} tokens"
    ]
    if report.unknown_calls:
        lines.append(f"  {report.unknown_calls} of {report.calls} calls have no known price (their dollars are unknown)")
    if report.by_preset:
        lines.append("  by preset: " + ", ".join(f"{s.key} {format_total(s.priced_usd, s.unknown_calls)}"
                                               for s in report.by_preset))
    for role, spends in (("references", report.references), ("aggregator", report.aggregators),
                         ("transcription", report.transcriptions)):
        if spends:
            lines.append(f"  {role}: " + ", ".join(f"{s.key} {format_total(s.priced_usd, s.unknown_calls)}"
                                                   for s in spends))
    return "\n".join(lines)


def estimate_turn_usd(preset: Preset, providers: Mapping[str, ProviderSettings], prompt_chars: int) -> float:
    """What one turn of `preset` may cost, from its prices: each reference reads the prompt and
    writes its max_tokens (DEFAULT_OUTPUT_TOKENS when unset), the aggregator reads the prompt and
    that advice and writes its own max_tokens, once. Unpriced models add nothing (the budgets
    count only known dollars)."""
    prompt = math.ceil(prompt_chars / 4)

    def cost(slot, input_tokens: int) -> tuple[float, int]:
        output = slot.max_tokens or DEFAULT_OUTPUT_TOKENS
        provider = providers.get(slot.provider)
        if provider is None or slot.is_recursive:
            return 0.0, 0
        usd = price_call(provider, slot.model, Usage(input=input_tokens, output=output, source="estimated"), None).usd
        return usd or 0.0, output

    total, advice = 0.0, 0
    if preset.enabled:
        for slot in preset.references:
            usd, written = cost(slot, prompt)
            total, advice = total + usd, advice + written
    return total + cost(preset.aggregator, prompt + advice)[0]


class CostCommands:
    """The hooks the Gateway calls: `cost_commands` and `budget_check`."""

    def __init__(self, config: Config):
        self.config = config
        self.tz = ZoneInfo(config.gateway.timezone)
        self._admission = asyncio.Lock()

    def _channel(self, message: InboundMessage):
        return self.config.channels.get(f"{message.platform}:{message.chat_id}")

    async def __call__(self, gateway, message: InboundMessage, command: Command) -> str:
        now = gateway.clock.now()
        if isinstance(command, ShowCost):
            if command.all_chats:
                everything = await cost_report(gateway.store, period=command.period, now=now, tz=self.tz,
                                               platform=None, chat_id=None, user_id=None)
                return render_report("All chats", everything)
            chat = await cost_report(gateway.store, period=command.period, now=now, tz=self.tz,
                                     platform=message.platform, chat_id=message.chat_id, user_id=None)
            mine = await cost_report(gateway.store, period=command.period, now=now, tz=self.tz,
                                     platform=message.platform, chat_id=None, user_id=message.user_id)
            return render_report("This chat", chat) + "\n" + render_report("You", mine)
        if isinstance(command, ShowBudget):
            lines = await budget_status(gateway.store, self.config.budgets, self._channel(message),
                                        message.platform, message.chat_id, message.user_id, now, self.tz,
                                        gateway.reservations)
            if not lines:
                return "No budgets are set."
            return "Budgets:\n" + "\n".join(f"• {describe_budget(line)}" for line in lines)
        if isinstance(command, SendDigest):
            from gateway.costs.delivery import send_digest_now

            await send_digest_now(gateway, self.config, message)
            return ""
        return ""

    async def budget_check(self, gateway, message: InboundMessage, *, turn_id: int | None = None,
                           preset: str | None = None, prompt: str = "") -> str | None:
        """None when the turn may run (its estimate is then held until it ends), else the
        refusal. A turn is admitted while spent + held for running turns < limit, so a budget
        is overshot by at most what the turns already running cost beyond their estimates
        (README: "How far a budget can be overshot")."""
        channel = self._channel(message)
        limits = effective_limits(self.config.budgets, channel)
        if not limits:
            return None
        async with self._admission:  # check and reserve as one step
            verdict = await check_budget(gateway.store, self.config.budgets, channel, message.platform,
                                         message.chat_id, message.user_id, gateway.clock.now(), self.tz,
                                         gateway.reservations)
            if not verdict.allowed:
                return verdict.reason
            if turn_id is not None:
                scopes = [budget_scope("user_day", f"{message.platform}:{message.user_id}"),
                          budget_scope("chat_month", f"{message.platform}:{message.chat_id}")]
                estimate = await self.estimate(gateway, message, preset, prompt)
                gateway.reservations.reserve(turn_id, scopes, estimate)
        return None

    async def estimate(self, gateway, message: InboundMessage, preset: str | None, prompt: str) -> float:
        """The user's most expensive of their last five turns of this preset; without such
        turns, the estimate from the preset's prices."""
        name = preset or self.config.gateway.default_preset
        recent = await gateway.store.recent_turn_costs(message.platform, message.user_id, name)
        if recent:
            return max(recent)
        found = self.config.engine.presets.get(name)
        return estimate_turn_usd(found, self.config.engine.providers, len(prompt)) if found else 0.0
