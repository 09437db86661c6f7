"""Opt-in: a real model (SmolLM2-135M through llama-cpp-python's server) in a real Open WebUI.

Run with `scripts/test --real-model` (it builds the server's venv once, ~7 min on 2 cores).
Skipped otherwise. Three participants talk for two rounds, then the user follows up; every turn
must stay within its token limit, no follow-up request may overflow the model's context, no
participant may write another's lines, and the title must not be a placeholder.
"""

from __future__ import annotations

import os

import pytest
import pytest_asyncio

from tests.integration import real_model
from tests.integration.conftest import ROOT

pytestmark = [
    pytest.mark.real_model,
    # Two messages of six real turns each, plus tasks: 3-7 minutes alone, more on a busy machine.
    pytest.mark.timeout(1800),
    pytest.mark.skipif(
        os.environ.get("MMC_REAL_MODEL") != "1" or not real_model.available(),
        reason="opt-in: scripts/test --real-model",
    ),
]
MAX_TOKENS = 400  # the valve's default


@pytest_asyncio.fixture
async def real_owui(tmp_path):
    async with real_model.deployment(tmp_path, ROOT / "multi_model_conversation.py") as both:
        yield both


async def test_a_real_model_conversation_stays_bounded_fitting_and_in_character(real_owui):
    owui, server = real_owui
    client = await owui.connect()
    try:
        first, follow = await real_model.converse(owui, client, server, "mmc.Conversation-pipe")
    finally:
        await client.disconnect()
    print("real model:", first.as_dict(), follow.as_dict())

    assert first.turns == 6 and follow.turns == 6
    for measured in (first, follow):
        assert measured.longest_turn_tokens <= MAX_TOKENS + 8, measured
        assert measured.imitation_lines == 0, measured.examples
    assert follow.context_errors == 0 and follow.failed_requests == 0, follow
    assert first.title.strip().casefold() not in real_model.PLACEHOLDER_TITLES, first.title
