"""`/moa cost`, `/moa budget` and the pre-turn budget check: the gateway's side of gateway.costs.reports.

Turns cost reports and budget lines into plain text the adapters render; periods are computed in
`[gateway] timezone`.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo

from adapters.contract import InboundMessage
from adapters.figures import format_total
from gateway.commands import Command, SendDigest, ShowBudget, ShowCost
from gateway.config import Config
from gateway.costs.reports import CostReport, budget_status, check_budget, cost_report, describe_budget


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


class CostCommands:
    """The hooks the Gateway calls: `cost_commands` and `budget_check`."""

    def __init__(self, config: Config):
        self.config = config
        self.tz = ZoneInfo(config.gateway.timezone)

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
                                        message.platform, message.chat_id, message.user_id, now, self.tz)
            if not lines:
                return "No budgets are set."
            return "Budgets:\n" + "\n".join(f"• {describe_budget(line)}" for line in lines)
        if isinstance(command, SendDigest):
            from gateway.costs.delivery import send_digest_now

            await send_digest_now(gateway, self.config, message)
            return ""
        return ""

    async def budget_check(self, gateway, message: InboundMessage) -> str | None:
        verdict = await check_budget(gateway.store, self.config.budgets, self._channel(message),
                                     message.platform, message.chat_id, message.user_id, gateway.clock.now(),
                                     self.tz)
        return None if verdict.allowed else verdict.reason
