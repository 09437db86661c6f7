"""Issue 20: one fitter for the whole request. Long pastes, huge tool results, contexts that
cannot hold a participant, and limits learnt so that one chat cannot starve another."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

import multi_model_conversation as mmc
from tests.fakes import PipeHarness, Script, config, reply, tool_call_chunks

CONTEXT = 8192  # the valve's default: the assumed context of a model without num_ctx


def streamed(h: PipeHarness) -> list[dict]:
    return [r for r in h.host.requests if r["stream"]]


def viewed(request: dict) -> str:
    return "\n".join(mmc._text_of(m.get("content")) for m in request["messages"])


def tokens(request: dict) -> float:
    """What the pipe counts for a request: characters at 3 a token, plus tool specs."""
    chars = mmc.message_chars(request["messages"]) + len(json.dumps(request.get("tools") or ""))
    return chars / mmc.DEFAULT_CHARS_PER_TOKEN


def report(n: int) -> str:
    """A pasted report of about `n` characters, each line numbered."""
    lines, i = [], 0
    while sum(map(len, lines)) < n:
        lines.append(f"Line {i:05d} of the quarterly report says revenue grew a little.\n")
        i += 1
    return "REPORT-START\n" + "".join(lines) + "REPORT-END"


# -- the plan: leave out the oldest, cut the longest ---------------------------------------------


def test_a_long_part_is_cut_to_one_level_before_short_turns_are_left_out():
    assert mmc.plan_fit([32_000, 1_200, 1_300], [True, False, False], 22_000) == [
        19_500,
        1_200,
        1_300,
    ]
    # Many short turns: the oldest go, nothing is cut.
    assert mmc.plan_fit([300] * 10, [True] + [False] * 9, 1_800) == [
        300,
        0,
        0,
        0,
        0,
        300,
        300,
        300,
        300,
        300,
    ]
    # The kept parts cannot shrink below MIN_KEPT_CHARS: no plan.
    assert mmc.plan_fit([5_000, 5_000], [True, True], 700) is None


@given(
    st.lists(st.integers(0, 50_000), min_size=1, max_size=30),
    st.integers(2 * mmc.MIN_KEPT_CHARS, 100_000),
    st.data(),
)
def test_a_plan_always_fits_and_never_drops_a_kept_part(sizes, room, data):
    keep = [data.draw(st.booleans()) for _ in sizes]
    plan = mmc.plan_fit(sizes, keep, room)
    needed = sum(min(s, mmc.MIN_KEPT_CHARS) for s, k in zip(sizes, keep, strict=True) if k)
    if needed > room:
        assert plan is None
        return
    assert plan is not None and sum(plan) <= room
    assert all(0 <= p <= s for p, s in zip(plan, sizes, strict=True))
    assert all(p > 0 for p, s, k in zip(plan, sizes, keep, strict=True) if k and s)


def test_cut_middle_keeps_both_ends_and_marks_the_cut():
    text = "A" * 500 + "B" * 500
    cut = mmc.cut_middle(text, 101)
    assert len(cut) <= 101 and cut.startswith("A") and cut.endswith("B") and "[…]" in cut
    assert mmc.cut_middle("short", 100) == "short"


# -- a long paste: everyone still hears everyone --------------------------------------------------


async def test_a_long_paste_is_shortened_in_the_middle_and_every_speaker_hears_the_others():
    h = PipeHarness(models={"a": "Ana", "b": "Ben", "c": "Chen"})
    h.host.chat_configs["chat-1"] = config("a", "b", "c")
    paste = report(32_000)

    result = await h.run(paste)

    a, b, c = streamed(h)
    for request in (a, b, c):
        text = viewed(request)
        assert tokens(request) + 400 <= CONTEXT, tokens(request)
        assert "REPORT-START" in text and "REPORT-END" in text and "[…]" in text
        assert text.count("quarterly report") > 0.6 * paste.count("quarterly report")
    # The third speaker hears both earlier speakers' turns.
    assert "a reply 1" in viewed(c) and "b reply 2" in viewed(c) and "a reply 1" in viewed(b)
    # The user is told once per model: which one, and how much was kept.
    notices = re.findall(r"\*✂️ Your message was shortened for (\w+): ([\d,]+) of ([\d,]+)", result)
    assert [n[0] for n in notices] == ["Ana", "Ben", "Chen"]
    assert all(
        int(k.replace(",", "")) < int(t.replace(",", "")) == len(paste) for _, k, t in notices
    )
    # The notice is not history: the next message's requests do not carry it.
    await h.run(
        "Thanks",
        history=[{"role": "user", "content": paste}, {"role": "assistant", "content": result}],
    )
    assert not any("shortened" in viewed(r) for r in streamed(h)[3:])


async def test_a_short_message_is_not_cut_and_nothing_is_said():
    h = PipeHarness(models={"a": "Ana", "b": "Ben"})
    h.host.chat_configs["chat-1"] = config("a", "b")
    text = report(10_000)

    result = await h.run(text)

    assert all(text in viewed(r) for r in streamed(h))
    assert "shortened" not in result and "[…]" not in json.dumps(h.host.requests)


async def test_a_60000_character_message_gets_one_request_per_turn_and_one_line_per_model():
    h = PipeHarness(models={"a": "Ana", "b": "Ben"})
    h.host.chat_configs["chat-1"] = config("a", "b", rounds=1)

    result = await h.run(report(60_000))

    assert [r["model"] for r in h.host.requests] == ["a", "b"]
    assert all(tokens(r) + 400 <= CONTEXT for r in h.host.requests)
    assert result.count("Your message was shortened") == 2 and "could not answer" not in result


async def test_the_topic_stays_and_the_note_stands_where_turns_were_left_out():
    h = PipeHarness(models={"a": "Ana"})
    h.host.records["a"] = mmc_record(num_ctx=1200)
    h.host.chat_configs["chat-1"] = config("a")
    history = [{"role": "user", "content": "TOPIC: should we move to Rust?"}]
    for i in range(30):
        history.append({"role": "assistant", "content": f"### 🔴 A\n\nturn{i} " + "word " * 60})
        history.append({"role": "user", "content": f"user{i} " + "more " * 30})

    await h.run("LATEST question", history=history)

    text = viewed(streamed(h)[0])
    note = re.search(r"\((\d+) earlier turns of this conversation left out\.\)", text)
    assert note and text.index("TOPIC") < note.start() < text.index("turn29")
    assert "turn0 " not in text and text.endswith('"LATEST question"') or "LATEST question" in text


# -- what cannot fit at all sits out, without more requests -------------------------------------


async def test_a_participant_whose_instructions_cannot_fit_sits_out_with_one_line():
    h = PipeHarness(models={"a": "Ana", "b": "Ben"})
    h.host.records["a"] = mmc_record(num_ctx=1000)
    h.host.chat_configs["chat-1"] = {
        "rounds": 3,
        "participants": [
            {"model": "a", "alias": "Ana", "system_message": "You are Ana. " * 400},
            {"model": "b", "alias": "Ben"},
        ],
    }

    result = await h.run("Hello")

    assert [r["model"] for r in h.host.requests] == ["b", "b", "b"]
    assert result.count("Ana could not answer") == 1 and "sits out the rest" in result


async def test_when_nobody_can_go_on_the_run_ends_early():
    h = PipeHarness(models={"a": "Ana"})
    h.host.chat_configs["chat-1"] = config("a", rounds=5)
    h.host.scripts["a"] = Script(streams=[mmc.ModelCallError("HTTP 400: prompt is too long")] * 9)

    history = [{"role": "user", "content": "old " * 3000}, {"role": "assistant", "content": "ok"}]

    result = await h.run("Hello", history=history)

    assert len(h.host.requests) == 2  # the first try and one refit, then it sits out
    assert result.count("could not answer") == 1
    assert result.endswith("no participant's model can hold the conversation.*")


# -- limits learnt safely -------------------------------------------------------------------------


def test_rate_limits_and_quotas_are_not_context_errors():
    assert not mmc.is_context_error("Rate limit: too many tokens per minute")
    assert not mmc.is_context_error("HTTP 429: You exceeded your current quota (TPM)")
    assert mmc.is_context_error("HTTP 400: prompt is too long")
    assert mmc.is_context_error("This model's maximum context length is 8192 tokens")


async def test_an_error_naming_no_size_shrinks_only_this_request_not_other_chats():
    h = PipeHarness(models={"a": "Ana"})
    h.host.chat_configs["chat-1"] = config("a")
    h.host.chat_configs["chat-2"] = config("a")
    history = [{"role": "user", "content": "old " * 3000}, {"role": "assistant", "content": "ok"}]
    h.host.scripts["a"] = Script(streams=[mmc.ModelCallError("HTTP 400: prompt is too long")])

    await h.run("Hi", history=history)
    first, refit = streamed(h)
    assert mmc.message_chars(refit["messages"]) <= 0.75 * mmc.message_chars(first["messages"]) + 1
    assert h.pipe.model_facts.sizes == {}  # nothing learnt for everyone

    await h.run("Hi", history=history, chat_id="chat-2", user_id="u1")
    assert viewed(streamed(h)[-1]) == viewed(first)  # another chat sends what it always did


async def test_a_failure_naming_no_size_learns_nothing_and_its_retry_keeps_to_what_worked():
    """Issue 29.1 changed this: a nameless error used to write the largest prompt that worked
    into the shared sizes; now it shrinks only its own retry (to what worked, never under
    the floor) and the facts every run shares stay as they were."""
    facts = mmc.ModelFacts()
    budget = mmc.ContextBudget(8192, facts)
    profile = mmc.ModelProfile("a", "A", {})
    assert not budget.learn(profile, "prompt is too long")  # no size named: nothing learnt
    assert budget.retry_chars(profile, 9000) == int(9000 * mmc.UNNAMED_REFIT_SHRINK)
    budget.calibrate(profile, chars=3000, prompt_tokens=700)  # 700 tokens worked
    assert not budget.learn(profile, "prompt is too long") and facts.sizes == {}
    assert budget.limit(profile) == 8192  # what every later request assumes: unchanged
    floor = int(mmc.CONTEXT_FLOOR_TOKENS * budget.chars_per_token(profile))
    assert budget.retry_chars(profile, 30_000) == floor  # 700 < floor
    worked = mmc.ContextBudget(8192, mmc.ModelFacts(proven={"a": 2500}))
    assert worked.retry_chars(profile, 40_000) == 2500 * mmc.DEFAULT_CHARS_PER_TOKEN
    # A size the server names is a fact: it is kept as named.
    named = mmc.ContextBudget(8192)
    assert named.learn(profile, "maximum context length is 900 tokens")
    assert named.limit(profile) == 900


# -- tool results are fitted too -------------------------------------------------------------------


def _big_tool(h: PipeHarness, size: int) -> None:
    async def fetch() -> str:
        return report(size)

    h.host.tools = {"fetch": {"spec": {"name": "fetch", "parameters": {}}, "callable": fetch}}


async def test_a_huge_tool_result_is_cut_to_fit_before_the_next_request():
    h = PipeHarness(models={"a": "Ana"})
    _big_tool(h, 56_000)
    h.host.chat_configs["chat-1"] = config("a")
    h.host.scripts["a"] = Script(streams=[tool_call_chunks("fetch", "{}"), reply("Summed up.")])

    result = await h.run("Fetch the report")

    _, after = streamed(h)
    assert tokens(after) + 400 <= CONTEXT, tokens(after)
    (tool,) = [m for m in after["messages"] if m["role"] == "tool"]
    assert tool["content"].startswith("REPORT-START") and tool["content"].endswith("REPORT-END")
    assert "[…]" in tool["content"] and "Summed up." in result


async def test_a_context_error_after_a_tool_round_is_refitted_once():
    h = PipeHarness(models={"a": "Ana"})
    _big_tool(h, 20_000)
    h.host.chat_configs["chat-1"] = config("a")
    too_long = mmc.ModelCallError("HTTP 400: maximum context length is 4000 tokens")
    h.host.scripts["a"] = Script(
        streams=[tool_call_chunks("fetch", "{}"), too_long, reply("Done with it.")]
    )

    result = await h.run("Fetch the report")

    first, failed, refit = streamed(h)
    assert tokens(refit) + 400 <= 4000 * 0.9 and "Done with it." in result
    assert "could not answer" not in result


def mmc_record(**params):
    from types import SimpleNamespace

    return SimpleNamespace(params=params, meta={})


@pytest.mark.parametrize("size", [0, 5, 2_000])
def test_fit_turns_leaves_short_conversations_alone(size):
    turns = [mmc.Turn(None, "x" * size), mmc.Turn("A", "y" * size)]
    fitted = mmc.fit_turns(turns, 100_000)
    assert fitted is not None and fitted.turns == turns and fitted.omitted == 0


async def test_a_prompt_that_worked_in_one_chat_bounds_a_nameless_retry_and_nothing_more():
    h = PipeHarness(models={"a": "Ana"})
    h.host.chat_configs["chat-1"] = config("a")
    h.host.chat_configs["chat-2"] = config("a")
    usage = 'data: {"choices": [], "usage": {"prompt_tokens": 3000, "total_tokens": 3100}}\n\n'
    h.host.scripts["a"] = Script(
        streams=[
            [*reply("fine"), usage],  # chat 1: a 3,000-token prompt worked
            mmc.ModelCallError("HTTP 400: prompt is too long"),  # chat 2: no size named
        ]
    )
    await h.run("Hi")
    assert h.pipe.model_facts.proven == {"a": 3000}

    history = [{"role": "user", "content": "old " * 8000}, {"role": "assistant", "content": "ok"}]
    await h.run("Hi", history=history, chat_id="chat-2")

    assert h.pipe.model_facts.sizes == {}  # issue 29.1: nothing learnt for other chats
    assert tokens(streamed(h)[-1]) <= 3000  # this retry keeps to what worked


async def test_the_managers_view_of_the_conversation_fits_its_model():
    h = PipeHarness(models={"a": "Ana", "b": "Ben", "boss": "Boss"})
    h.host.records["boss"] = mmc_record(num_ctx=1000)
    h.host.chat_configs["chat-1"] = config("a", "b", use_manager=True, manager_model="boss")
    h.host.scripts["boss"] = Script(completions=["B", "A"])

    await h.run(report(20_000))

    for request in (r for r in h.host.requests if r["model"] == "boss"):
        assert mmc.message_chars(request["messages"]) / 3 + 4 * 48 <= 1000


async def test_tool_definitions_that_leave_no_room_are_left_out_for_the_turn():
    h = PipeHarness(models={"a": "Ana"})

    async def noop() -> str:
        return ""

    spec = {"name": "noop", "description": "x" * 30_000, "parameters": {}}
    h.host.tools = {"noop": {"spec": spec, "callable": noop}}
    h.host.records["a"] = mmc_record(num_ctx=8192)  # a known context, not an assumed one
    h.host.chat_configs["chat-1"] = config("a")

    result = await h.run("Hello")

    (request,) = streamed(h)
    assert "tools" not in request and "a reply" in result
    assert result.count("answers without tools this turn") == 1 and "sits out" not in result

    # With an assumed context (no num_ctx), the tools go as they are: the server decides.
    h.host.records.clear()
    h.host.requests.clear()
    result = await h.run("Hello")
    assert "tools" in streamed(h)[0] and "without tools" not in result


async def test_an_assumed_context_never_makes_a_participant_sit_out():
    h = PipeHarness(models={"a": "Ana"})  # no num_ctx: CONTEXT_TOKENS is only a guess
    h.pipe.valves.CONTEXT_TOKENS = 500
    h.host.chat_configs["chat-1"] = {
        "rounds": 1,
        "participants": [{"model": "a", "alias": "Ana", "system_message": "Long persona. " * 200}],
    }

    result = await h.run("Hello")

    assert len(streamed(h)) == 1 and "sits out" not in result and "a reply" in result
