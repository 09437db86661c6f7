"""What real models do that scripted ones rarely do, on the fake host (issue 10).

Runaway and cut replies, context limits, speakers writing each other's lines, managers naming
several people, background tasks answering prose, and tools offered where nobody asked.
"""

from __future__ import annotations

import asyncio
import json
import re

import multi_model_conversation as mmc
from tests.fakes import PipeHarness, Script, chunk, config, reply


def speakers(transcript: str) -> list[str]:
    return re.findall(r"^### \S+ (.+)$", transcript, re.MULTILINE)


def streamed(h: PipeHarness) -> list[dict]:
    return [r for r in h.host.requests if r["stream"]]


def finish(reason: str) -> str:
    """The last frame of a reply, carrying its finish reason."""
    frame = {"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}
    return f"data: {json.dumps(frame)}\n\n"


def viewed(request: dict) -> str:
    """Everything a request showed the model, as one text."""
    return "\n".join(str(m.get("content")) for m in request["messages"])


# -- 1. turn bounds -------------------------------------------------------------------------------


async def test_every_turn_asks_for_a_bounded_reply_and_a_participant_may_set_its_own():
    h = PipeHarness(models={"a": "A", "b": "B", "c": "C"})
    cfg = config("a", "b", "c")
    cfg["participants"][1]["max_tokens"] = 50
    cfg["participants"][2]["max_tokens"] = 0
    h.host.chat_configs["chat-1"] = cfg

    await h.run()

    sent = [r.get("max_tokens") for r in streamed(h)]
    assert sent == [400, 50, None]


async def test_a_config_saved_before_max_tokens_still_loads_and_a_negative_one_is_refused():
    old = mmc.parse_config(config("a", "b"), 20)
    assert [p.max_tokens for p in old.participants] == [None, None]
    bad = config("a")
    bad["participants"][0]["max_tokens"] = -5
    try:
        mmc.parse_config(bad, 20)
    except mmc.ConfigError as exc:
        assert "Participant 1, max tokens: must be 0 or more" in str(exc)
    else:
        raise AssertionError("a negative max_tokens was accepted")


async def test_a_reply_cut_by_length_is_marked_and_the_mark_stays_out_of_history():
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1", "m2")
    h.host.scripts["m1"] = Script(
        streams=[[chunk(content="I went on and on "), finish("length"), "data: [DONE]\n\n"]]
    )

    result = await h.run()

    assert re.search(r"I went on and on\s+\*✂️ …\(cut at 400 tokens\)\*\n", result), result
    assert speakers(result) == ["M1", "M2"]
    m2_view = viewed(streamed(h)[1])
    assert "I went on and on" in m2_view and "cut at" not in m2_view and "✂️" not in m2_view
    assert len(h.host.requests) == 2, "a cut reply is not retried"


async def test_a_reply_that_streams_past_the_time_limit_is_cut_and_its_stream_closed():
    h = PipeHarness()
    h.pipe.valves.TURN_TIME_LIMIT = 0.3  # real seconds
    h.host.chat_configs["chat-1"] = config("m1", "m2")
    original = h.host.stream_chat
    closed = []

    async def runaway(form, user):
        if form["model"] != "m1":
            async for piece in original(form, user):
                yield piece
            return
        try:
            while True:  # never finishes, never silent
                await asyncio.sleep(0.02)
                yield chunk(content="more ")
        finally:
            closed.append(True)

    h.host.stream_chat = runaway

    result = await asyncio.wait_for(h.run(), 10)

    assert "*✂️ …(cut after 0.3 s)*" in result and "could not answer" not in result
    assert closed == [True]
    assert speakers(result) == ["M1", "M2"]
    m2_view = viewed(streamed(h)[-1])  # m1's request is not recorded by the stand-in
    assert "more" in m2_view and "cut after" not in m2_view


async def test_a_stream_the_server_closes_unfinished_keeps_its_text_and_says_so():
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1", "m2")
    original = h.host.stream_chat

    async def gives_up(form, user):
        if form["model"] == "m1":
            yield chunk(content="Half a thought")  # then a clean close: no finish, no [DONE]
            return
        async for piece in original(form, user):
            yield piece

    h.host.stream_chat = gives_up

    result = await h.run()

    assert "Half a thought" in result
    assert "*⚠️ M1 could not answer: the stream ended before the model finished*" in result
    assert speakers(result) == ["M1", "M2"] and len(h.host.requests) == 1


# -- 2. context that fits -------------------------------------------------------------------------


def long_history(turns: int, words: int = 50) -> list[dict]:
    """Earlier messages: user and assistant taking turns, each `words` words long."""
    out = []
    for i in range(turns):
        text = " ".join(f"t{i}w{j}" for j in range(words))
        out.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return out


def chars(request: dict) -> int:
    return sum(len(str(m.get("content"))) + 16 for m in request["messages"])


async def test_the_oldest_turns_are_left_out_to_fit_the_models_context_and_that_is_said():
    h = PipeHarness()
    h.host.records["m1"] = mmc_record(num_ctx=1000)
    h.host.chat_configs["chat-1"] = {
        "rounds": 1,
        "participants": [{"model": "m1", "alias": "Ada", "system_message": "PERSONA pirate"}],
    }

    await h.run("LATEST question", history=long_history(40))

    (request,) = streamed(h)
    messages = request["messages"]
    assert messages[0]["role"] == "system" and "PERSONA pirate" in messages[0]["content"]
    assert messages[-1]["content"].endswith('"LATEST question"')
    text = viewed(request)
    match = re.search(r"\((\d+) earlier turns of this conversation left out\.\)", text)
    assert match and 0 < int(match.group(1)) < 40
    dropped = int(match.group(1))
    # The topic (the first message) stays, the note stands where the left-out turns were
    # (issue 20; before, the topic went first).
    assert text.index("t0w0") < match.start() < text.index(f"t{dropped + 1}w0")
    assert "t1w0" not in text and f"t{dropped}w0" not in text and "t39w0" in text
    assert chars(request) / mmc.DEFAULT_CHARS_PER_TOKEN + 400 <= 1000


async def test_a_model_params_custom_max_context_counts_and_without_one_the_valve_does():
    assert mmc.context_size({"custom_params": {"max_context": "2048"}}) == 2048
    assert mmc.context_size({}, {"num_ctx": 4096}) == 4096
    h = PipeHarness()
    h.pipe.valves.CONTEXT_TOKENS = 800
    h.host.chat_configs["chat-1"] = config("m1")
    await h.run("LATEST", history=long_history(40))
    assert "earlier turns of this conversation left out" in viewed(streamed(h)[0])


async def test_a_context_length_error_trims_harder_once_then_gives_a_clear_line_no_plain_retry():
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1", "m2")
    too_long = mmc.ModelCallError(
        "HTTP 400: This model's maximum context length is 2000 tokens. However, you requested "
        "9000 tokens."
    )
    h.host.scripts["m1"] = Script(streams=[too_long, too_long])

    result = await h.run("LATEST", history=long_history(60))

    m1 = [r for r in h.host.requests if r["model"] == "m1"]
    assert [r["stream"] for r in m1] == [True, True], "no plain retry"
    first, second = m1
    assert chars(second) < chars(first)
    assert chars(second) / mmc.DEFAULT_CHARS_PER_TOKEN + 400 <= 2000, "fits what it named"
    assert second["messages"][-1]["content"].endswith('"LATEST"')
    line = "*⚠️ M1 could not answer: the conversation does not fit its model's context"
    assert result.count(line) == 1
    assert speakers(result) == ["M1", "M2"]


async def test_a_context_length_error_then_a_fitting_request_answers():
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1")
    h.host.scripts["m1"] = Script(
        streams=[
            mmc.ModelCallError("HTTP 400: Requested tokens (9100) exceed context window of 1500")
        ]
    )

    result = await h.run("LATEST", history=long_history(60))

    assert "could not answer" not in result and "m1 reply" in result
    assert chars(streamed(h)[1]) / mmc.DEFAULT_CHARS_PER_TOKEN + 400 <= 1500


def test_the_servers_usage_calibrates_the_characters_per_token():
    events = mmc.decode_frame(json.dumps({"choices": [], "usage": {"prompt_tokens": 120}}))
    assert [(e.kind, e.count) for e in events] == [("usage", 120)]
    budget = mmc.ContextBudget(1000)
    profile = mmc.ModelProfile("m1", "m1", {})
    before = budget.room_chars(profile, 100, 1.0)
    budget.calibrate(profile, chars=1200, prompt_tokens=120)  # 10 chars/token: capped at 8
    assert budget.chars_per_token(profile) == 8.0
    budget.calibrate(profile, chars=1200, prompt_tokens=600)  # 2 chars/token, taken a bit low
    assert budget.chars_per_token(profile) == 1.8
    assert budget.room_chars(profile, 100, 1.0) < before


def mmc_record(**params):
    from types import SimpleNamespace

    return SimpleNamespace(params=params, meta={})


# -- 6. tools only where asked for ---------------------------------------------------------------


def _one_tool(h: PipeHarness) -> None:
    async def echo(text: str = "") -> str:
        return text

    h.host.tools = {"echo": {"spec": {"name": "echo", "parameters": {}}, "callable": echo}}


async def test_no_tools_are_loaded_or_offered_when_nobody_picked_any():
    h = PipeHarness()
    h.pipe.valves.BUILTIN_TOOLS = False
    _one_tool(h)
    h.host.chat_configs["chat-1"] = config("m1", "m2")

    await h.run()

    assert h.host.tool_loads == []
    assert all("tools" not in r for r in h.host.requests)


async def test_picked_tools_come_without_the_builtins_and_a_feature_brings_them():
    h = PipeHarness()
    h.pipe.valves.BUILTIN_TOOLS = False
    _one_tool(h)
    h.host.chat_configs["chat-1"] = config("m1")

    await h.run(metadata={"tool_ids": ["echo_tool"]})
    assert h.host.tool_loads == [{"tool_ids": ["echo_tool"], "builtin": False}]
    assert [t["function"]["name"] for t in streamed(h)[0]["tools"]] == ["echo"]

    h.host.tool_loads.clear()
    await h.run(metadata={"features": {"web_search": True}})
    assert h.host.tool_loads == [{"tool_ids": [], "builtin": True}]

    h.host.tool_loads.clear()
    h.pipe.valves.BUILTIN_TOOLS = True
    await h.run()
    assert h.host.tool_loads == [{"tool_ids": [], "builtin": True}]


# -- 3. speakers stay themselves -----------------------------------------------------------------


def guarded(chunks: list[str], own: str = "Tom", others=("Mia", "Ann", "User")):
    guard = mmc.SpeakerGuard(own, [own, *others])
    shown = "".join(guard.feed(c) for c in chunks) + guard.flush()
    return shown, guard.stopped_by


def test_the_guard_drops_a_leading_label_and_ends_at_someone_elses_line_however_split():
    text = (
        "**Tom:** Hello there.\nMiami is warm, Mia said so.\nTom: still me\n"
        "Mia: I am Mia now\nAnn: me too"
    )
    expected = "Hello there.\nMiami is warm, Mia said so.\nstill me\n"
    for cut in range(len(text) + 1):
        for second in (cut, min(len(text), cut + 3)):
            assert guarded([text[:cut], text[cut:second], text[second:]]) == (expected, "mia")
    assert guarded(["Mia said: I open as Mia\nthen me"]) == ("I open as Mia\nthen me", None)
    assert guarded(["Ann"]) == ("Ann", None), "a held name with no colon is released at the end"


def test_each_participant_stops_on_the_next_speakers_and_the_users_labels_at_most_four():
    assert mmc.stop_sequences("B", ["A", "B", "C"], "Ann") == [
        '\nC said: "',
        '\nC: "',
        '\nA said: "',
        '\nA: "',
    ]
    five = ["A", "B", "C", "D", "E"]
    assert mmc.stop_sequences("C", five, "Ann") == [
        '\nD said: "',
        '\nD: "',
        '\nE said: "',
        '\nE: "',
    ]
    assert mmc.stop_sequences("A", ["A"], "Ann") == ['\nAnn said: "', '\nAnn: "']


async def test_a_model_writing_other_participants_lines_is_cut_before_them():
    h = PipeHarness(models={"a": "A", "b": "B"})
    h.host.chat_configs["chat-1"] = config("a", "b")
    h.host.scripts["a"] = Script(
        streams=[reply("A: I start.\nAnd go on.\nB: I am B, says A.\nAnn: and the user")]
    )

    result = await h.run()

    assert "I start.\nAnd go on." in result
    shown = mmc.BLOCK_RE.sub("", result)  # issue 26: the cut lines are folded, not deleted
    assert "I am B" not in shown and "and the user" not in shown and "A: I start" not in shown
    assert "B: I am B, says A." in result.split('<details type="cut"')[1]
    assert speakers(result) == ["A", "B"] and "could not answer" not in result
    a_request, b_request = streamed(h)
    assert a_request["stop"] == ['\nB said: "', '\nB: "', '\nAnn said: "', '\nAnn: "']
    assert b_request["stop"] == ['\nA said: "', '\nA: "', '\nAnn said: "', '\nAnn: "']
    assert "I am B" not in viewed(b_request) and "And go on." in viewed(b_request)


async def test_stop_sequences_can_be_switched_off_and_the_guard_still_cuts():
    h = PipeHarness(models={"a": "A", "b": "B"})
    h.pipe.valves.STOP_SEQUENCES = False
    h.host.chat_configs["chat-1"] = config("a", "b")
    h.host.scripts["a"] = Script(streams=[reply("Mine.\nB: Not mine, not mine")])

    result = await h.run()

    shown = mmc.BLOCK_RE.sub("", result)  # issue 26: the cut line is folded, not deleted
    assert "stop" not in streamed(h)[0] and "Mine." in shown and "not mine" not in shown
    assert "B: Not mine, not mine" in result


# -- 4. a manager naming several people ----------------------------------------------------------


def test_every_named_alias_counts_in_order_and_a_name_inside_a_longer_one_does_not():
    aliases = ["Mia", "Tom", "Mia 2", "Priya"]
    assert mmc.named_aliases("Mia\nTom", aliases) == [0, 1]
    assert mmc.named_aliases("Next: Tom, then Priya or Mia.", aliases) == [1, 3, 0]
    assert mmc.named_aliases("Mia 2 then Tom", aliases) == [2, 1]
    assert mmc.named_aliases("nobody", aliases) == []


async def test_a_manager_naming_several_people_gives_the_turn_to_the_first_who_may_speak():
    h = PipeHarness(models={"mia": "Mia", "tom": "Tom", "priya": "Priya", "boss": "Boss"})
    cfg = config("mia", "tom", "priya", use_manager=True, manager_model="boss")
    h.host.chat_configs["chat-1"] = cfg
    # Tom; then Tom again beside Mia (round robin would give Priya the turn); then repeats.
    h.host.scripts["boss"] = Script(completions=["TOM", "TOM\nMIA", "MIA, mia!"])

    result = await h.run()

    assert speakers(result) == ["TOM", "MIA", "TOM"]
    # The manager is bounded to what a name needs (issue 18), and never above MAX_TOKENS.
    asked = [r for r in h.host.requests if r["model"] == "boss"]
    assert len(asked) >= 3 and all(r.get("max_tokens") == 48 for r in asked)
    for limit, sent in ((0, 48), (20, 20)):
        h.host.requests.clear()
        h.pipe.valves.MAX_TOKENS = limit
        await h.run()
        assert all(r["max_tokens"] == sent for r in h.host.requests if r["model"] == "boss")


# -- 5. background tasks -------------------------------------------------------------------------

TITLE_PROMPT = (
    'JSON format: { "title": "your concise title here" }\nExamples: { "title": "Stock Trends" }'
)


async def test_tasks_go_to_the_admins_task_model_when_one_is_set():
    h = PipeHarness(models={"m1": "One", "m2": "Two", "small": "Small"})
    h.host.chat_configs["chat-1"] = config("m1", "m2")
    h.host.task_model_setting = ("", "small")
    h.host.scripts["small"] = Script(completions=['Sure! {"title": "Coffee Talk"} Hope it helps'])

    result = await h.run(TITLE_PROMPT, task="title_generation")

    assert result == '{"title": "Coffee Talk"}'
    assert [(r["model"], r["stream"]) for r in h.host.requests] == [("small", False)]


async def test_an_unknown_or_refused_task_model_falls_back_to_the_first_participant():
    h = PipeHarness(models={"m1": "One", "small": "Small"})
    h.host.chat_configs["chat-1"] = config("m1")
    h.host.denied.add("small")
    h.host.task_model_setting = ("gone", "small")
    h.host.scripts["m1"] = Script(completions=['{"tags": ["coffee", "### 🟢 Priya", "tag1"]}'])

    result = await h.run('Tags as { "tags": ["tag1", "tag2"] }', task="tags_generation")

    assert result == '{"tags": ["coffee"]}'
    assert [r["model"] for r in h.host.requests] == ["m1"]


def test_task_answers_of_the_wrong_shape_become_empty():
    assert mmc.task_answer("title_generation", "### 🟢 Priya\nA nice chat", TITLE_PROMPT) == ""
    assert (
        mmc.task_answer("title_generation", '{"title": "Your concise title here"}', TITLE_PROMPT)
        == ""
    )
    assert mmc.task_answer("title_generation", '{"title": "Stock Trends"}', TITLE_PROMPT) == ""
    assert mmc.task_answer("title_generation", '{"title": ["x"]}', TITLE_PROMPT) == ""
    assert mmc.task_answer("follow_up_generation", "Why? How?", "") == ""
    follow = mmc.task_answer("follow_up_generation", '{"follow_ups": ["Why?", 3, ""]}', "")
    assert follow == '{"follow_ups": ["Why?"]}'
    assert mmc.task_answer("query_generation", '{"queries": ["q"]}', "") == '{"queries": ["q"]}'


async def test_a_task_that_takes_too_long_is_dropped():
    h = PipeHarness()
    h.pipe.valves.TASK_TIMEOUT = 20
    h.host.chat_configs["chat-1"] = config("m1")
    never = asyncio.Event()

    async def hanging(form, user):
        await never.wait()

    h.host.complete = hanging
    task = asyncio.ensure_future(h.run(TITLE_PROMPT, task="title_generation"))
    for _ in range(50):
        await asyncio.sleep(0)
    assert not task.done()
    h.clock.advance(20)
    assert await asyncio.wait_for(task, 5) == ""


async def task_with(h: PipeHarness, prompt: str, **body) -> str:
    return await h.pipe.pipe(
        {"model": "mmc.Conversation-pipe", "messages": [{"role": "user", "content": prompt}]}
        | body,
        __user__={"id": "u1", "name": "Ann", "role": "user", "valves": h.pipe.UserValves()},
        __metadata__={"chat_id": "chat-1"},
        __task__="title_generation",
    )


async def test_a_task_keeps_a_smaller_max_tokens_from_the_host_and_is_bounded_otherwise():
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1")
    # A model that answers its titles (one that does not gets a short budget: test_task_budget).
    h.host.scripts["m1"] = Script(completions=['{"title": "Tea"}'] * 3)
    await task_with(h, "t", max_tokens=50)
    await task_with(h, "t")
    await task_with(h, "t", max_tokens=1000)  # Open WebUI's default for a task
    assert [r["max_tokens"] for r in h.host.requests] == [50, 400, 400]


def task_prompt(turns: int) -> str:
    """The host's title prompt around a long quoted chat, as Open WebUI writes it."""
    chat = "\n".join(f"ASSISTANT: turn{i} " + "word " * 60 for i in range(turns))
    return f"{TITLE_PROMPT}\n<chat_history>\nUSER: first question\n{chat}\n</chat_history>"


def test_a_task_prompt_loses_the_middle_of_the_quoted_chat_to_fit():
    messages = [{"role": "user", "content": task_prompt(40)}]
    assert mmc.fit_task_prompt(messages, None) is messages
    assert mmc.fit_task_prompt(messages, 10**6) is messages
    (fitted,) = mmc.fit_task_prompt(messages, 3000)
    text = fitted["content"]
    assert mmc.message_chars([fitted]) <= 3000 < mmc.message_chars(messages)
    assert text.startswith(TITLE_PROMPT) and text.endswith("</chat_history>")
    assert "USER: first question" in text and "turn39 " in text and "turn20 " not in text
    assert text.count("[…]") == 1


async def test_a_task_fits_the_task_models_context():
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1")
    h.host.models["m1"]["info"]["params"] = {"num_ctx": 1000}
    h.host.scripts["m1"] = Script(completions=['{"title": "Long Talk"}'])

    assert await task_with(h, task_prompt(60), max_tokens=200) == '{"title": "Long Talk"}'

    (request,) = h.host.requests
    assert chars(request) / mmc.DEFAULT_CHARS_PER_TOKEN + 200 <= 1000
    assert '"title"' in viewed(request) and "turn59 " in viewed(request)


async def test_a_task_over_the_context_is_refitted_once_and_the_limit_is_kept_for_later():
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1")
    too_long = mmc.ModelCallError("HTTP 400: Requested tokens (3900) exceed context window of 900")
    h.host.scripts["m1"] = Script(completions=[too_long, '{"title": "Long Talk"}'])

    # Open WebUI asks for 1,000 tokens unless the task model's params say otherwise.
    assert await task_with(h, task_prompt(60), max_tokens=1000) == '{"title": "Long Talk"}'
    first, second = h.host.requests
    assert chars(first) > chars(second)
    assert first["max_tokens"] == mmc.TASK_MAX_TOKENS and second["max_tokens"] == 900 // 4
    assert chars(second) / mmc.DEFAULT_CHARS_PER_TOKEN + 900 // 4 <= 900
    assert "turn59 " in viewed(second) and "first question" in viewed(second)

    # The next request, a turn in a later run, already fits what the server named.
    h.host.requests.clear()
    await h.run("LATEST", history=long_history(60))
    (turn,) = streamed(h)
    assert chars(turn) / mmc.DEFAULT_CHARS_PER_TOKEN + 400 <= 900


async def test_a_task_that_still_does_not_fit_gives_up_after_one_refit():
    h = PipeHarness()
    h.host.chat_configs["chat-1"] = config("m1")
    too_long = mmc.ModelCallError("HTTP 400: This model's maximum context length is 900 tokens")
    h.host.scripts["m1"] = Script(completions=[too_long, too_long, '{"title": "Never"}'])

    assert await task_with(h, task_prompt(60)) == ""
    assert len(h.host.requests) == 2


async def test_the_plain_retry_is_bounded_like_the_stream():
    h = PipeHarness(models={"a": "A", "b": "B"})
    h.host.chat_configs["chat-1"] = config("a", "b")
    h.host.scripts["a"] = Script(streams=[mmc.ModelCallError("HTTP 500: down")])

    await h.run()

    retry = [r for r in h.host.requests if not r["stream"]]
    assert [(r["model"], r["max_tokens"], r["stop"]) for r in retry] == [
        ("a", 400, ['\nB said: "', '\nB: "', '\nAnn said: "', '\nAnn: "'])
    ]


async def test_a_remembered_setup_keeps_a_participants_max_tokens_and_adds_nothing_otherwise():
    h = PipeHarness()
    answer = config("m1", "m2")
    answer["participants"][1]["max_tokens"] = 120

    async def dialog(event):
        return answer

    await h.run(event_call=dialog)

    rows = h.host.chat_configs["chat-1"]["participants"]
    assert "max_tokens" not in rows[0] and rows[1]["max_tokens"] == 120
    assert [r.get("max_tokens") for r in streamed(h)] == [400, 120]
