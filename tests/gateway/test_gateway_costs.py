"""Cost commands through the gateway: /moa cost, /moa budget, budget refusal, /moa digest."""

from __future__ import annotations

from adapters.contract import FileOut
from gateway.config import BudgetSettings, DigestSettings
from tests.fakes.provider_server import Reply
from tests.gateway.gateway_kit import make_gateway


async def spend_one_turn(gw, chat, fake, user="u1"):
    # $1/M in, $2/M out: 1,000,000 input tokens on the aggregator = $1.00.
    fake.reply("agg", Reply(text="pricey", usage={"input": 1_000_000, "output": 0}))
    await chat.push(chat.message("/moa spend", user=user))
    await gw.idle()


async def test_cost_report_for_the_chat_and_the_caller(fake, http, tmp_path):
    gw, chat = await make_gateway(fake, http, tmp_path)
    await spend_one_turn(gw, chat, fake)
    await chat.push(chat.message("/moa cost"))
    report = chat.notices()[-1]
    assert report.startswith("This chat — day")
    assert "$1.00" in report and "1 turn" in report and "You — day" in report
    assert "fake:agg" in report and "references" in report


async def test_all_chats_needs_an_admin(fake, http, tmp_path):
    gw, chat = await make_gateway(fake, http, tmp_path)
    await chat.push(chat.message("/moa cost month all", user="nobody"))
    assert chat.notices()[-1] == "Only admins can do that."
    await chat.push(chat.message("/moa cost month all", user="admin"))
    assert chat.notices()[-1].startswith("All chats — month")


async def test_a_turn_past_the_budget_is_refused_with_the_figures(fake, http, tmp_path):
    gw, chat = await make_gateway(fake, http, tmp_path,
                                  budgets=BudgetSettings(per_user_usd_day=1.0, per_chat_usd_month=None))
    await spend_one_turn(gw, chat, fake)  # spends exactly the $1.00 budget
    calls_before = len(fake.requests)
    await chat.push(chat.message("/moa one more"))
    await gw.idle()
    refusal = chat.notices()[-1]
    assert "$1.00" in refusal and "resets" in refusal and "Nothing was run" in refusal
    assert len(fake.requests) == calls_before  # the refusal cost nothing
    statuses = await gw.store.run(lambda db: [r["status"] for r in db.query("select status from turns order by id")])
    assert statuses == ["done", "refused"]  # stored, and not left waiting for a restart to report it
    await chat.push(chat.message("/moa budget"))
    assert "your daily budget: $1.00 of $1.00 spent" in chat.notices()[-1]
    # Another user still has budget.
    await chat.push(chat.message("/moa mine", user="u2"))
    await gw.idle()
    assert len(fake.requests) > calls_before


async def test_digest_now_for_admins_with_a_chart(fake, http, tmp_path):
    gw, chat = await make_gateway(fake, http, tmp_path,
                                  digest=DigestSettings("0 9 * * 1", "Europe/Berlin", ("fakechat:c1",)))
    await spend_one_turn(gw, chat, fake)
    await chat.push(chat.message("/moa digest", user="u1"))
    assert chat.notices()[-1] == "Only admins can do that."
    await chat.push(chat.message("/moa digest", user="admin"))
    files = [item for op, _, item, _ in chat.log if isinstance(item, FileOut)]
    assert len(files) == 1 and files[0].data.startswith(b"\x89PNG\r\n\x1a\n")
    assert "$1.00" in chat.notices()[-1]
