"""Background tasks that earn their wait: a task model that did not answer the JSON asked for
gets a short budget next time, so the message it keeps busy ends sooner."""

from __future__ import annotations

import asyncio

import multi_model_conversation as mmc
from tests.fakes import PipeHarness, Script, config

TITLE = 'JSON format: { "title": "your concise title here" }'
TAGS = 'JSON format: { "tags": ["tag1", "tag2"] }'


async def task(h: PipeHarness, kind: str, prompt: str) -> str:
    return await h.run(prompt, task=kind)


def harness(*answers: str) -> PipeHarness:
    h = PipeHarness(models={"m1": "One", "m2": "Two"})
    h.pipe.valves.TASK_TIMEOUT = 30
    h.host.chat_configs["chat-1"] = config("m1")
    h.host.scripts["m1"] = mmc_script(answers)
    return h


def mmc_script(answers) -> Script:
    return Script(completions=list(answers))


async def test_after_a_prose_answer_the_next_task_gets_a_short_budget_until_one_answers():
    h = harness(
        "Here is a nice title for this chat about tea and cakes",  # prose: no JSON
        '{"tags": ["tea"]}',
        '{"title": "Tea"}',
    )
    assert await task(h, "title_generation", TITLE) == ""
    assert await task(h, "tags_generation", TAGS) == '{"tags": ["tea"]}'
    assert await task(h, "title_generation", TITLE) == '{"title": "Tea"}'
    sent = [r["max_tokens"] for r in h.host.requests]
    assert sent == [mmc.TASK_MAX_TOKENS, mmc.TASK_RETRY_TOKENS, mmc.TASK_MAX_TOKENS]


async def test_a_model_that_answers_keeps_the_full_budget():
    h = harness('{"title": "Tea"}', '{"tags": ["tea"]}')
    await task(h, "title_generation", TITLE)
    await task(h, "tags_generation", TAGS)
    assert [r["max_tokens"] for r in h.host.requests] == [mmc.TASK_MAX_TOKENS] * 2
    assert h.pipe.task_failures == {}


async def test_a_slow_task_counts_as_unanswered_and_the_next_one_ends_in_a_third_of_the_time():
    h = harness()
    never = asyncio.Event()
    asked: list[dict] = []

    async def hanging(form, user):
        asked.append(form)
        await never.wait()

    h.host.complete = hanging
    first = asyncio.ensure_future(task(h, "title_generation", TITLE))
    for _ in range(50):
        await asyncio.sleep(0)
    h.clock.advance(30)
    assert await asyncio.wait_for(first, 5) == ""
    assert h.pipe.task_failures == {"m1": 1}

    second = asyncio.ensure_future(task(h, "tags_generation", TAGS))
    for _ in range(50):
        await asyncio.sleep(0)
    h.clock.advance(9.9)
    for _ in range(50):
        await asyncio.sleep(0)
    assert not second.done()  # not before a third of TASK_TIMEOUT
    h.clock.advance(0.1)
    assert await asyncio.wait_for(second, 5) == ""
    assert [f["max_tokens"] for f in asked] == [mmc.TASK_MAX_TOKENS, mmc.TASK_RETRY_TOKENS]


async def test_other_models_and_tasks_of_no_fixed_shape_are_not_affected():
    h = harness("prose instead of a title", "some queries")
    h.host.scripts["m2"] = mmc_script(['{"title": "Tea"}'])
    await task(h, "title_generation", TITLE)
    assert await task(h, "query_generation", "queries?") == "some queries"
    assert h.pipe.task_failures == {"m1": 1}  # a free-form task is no verdict
    h.host.chat_configs["chat-1"] = config("m2")
    assert await task(h, "title_generation", TITLE) == '{"title": "Tea"}'
    assert h.host.requests[-1]["max_tokens"] == mmc.TASK_MAX_TOKENS
