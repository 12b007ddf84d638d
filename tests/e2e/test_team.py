"""A team call in a real room: the initial member (support) greets, the caller asks a buying question, the
member hands off to sales with `transfer_to_member`, and sales answers the caller."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tests.e2e.caller import Caller
from tests.e2e.conftest import FRONT_DESK_TEAM
from tests.e2e.conversation import converse
from tests.e2e.providers import ProviderDoubles
from tests.e2e.session_records import wait_for_record
from tests.e2e.worker_process import WorkerEnv, WorkerProcess

SUPPORT_MEMBER = "4b0a9f8e-7d6c-4b5a-8f4e-3d2c1b0a9f01"
SALES_MEMBER = "4b0a9f8e-7d6c-4b5a-8f4e-3d2c1b0a9f02"
QUESTION = "How much does the pro plan cost"


async def test_team_greets_with_initial_member_and_hands_off(
    worker: WorkerProcess, world: WorkerEnv, doubles: ProviderDoubles, speak: Callable[[str], np.ndarray]
) -> None:
    minted = world.web_call("--team-id", FRONT_DESK_TEAM)
    caller = Caller(minted["livekit_url"], minted["access_token"])
    await caller.connect()
    try:
        conversation = await converse(caller, doubles, [(QUESTION, speak(QUESTION))], answer_timeout=15)
    finally:
        await caller.hang_up()
    assert conversation.joined_s < 5

    record = await wait_for_record(world.database_url, minted["session_id"])
    assert str(record.team_id) == FRONT_DESK_TEAM
    assistant = [item.text for item in record.transcript if item.role == "assistant"]
    assert assistant[0] == "Hi, you've reached Acme. How can I help?"  # the team's greeting, support speaking
    changes = [(str(c.from_member_id), str(c.to_member_id)) for c in record.member_changes]
    assert changes == [(SUPPORT_MEMBER, SALES_MEMBER)], record.member_changes
    assert any("sixty dollars" in text for text in assistant), assistant  # sales answered after the handoff
