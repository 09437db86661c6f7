"""Issue 19: Open WebUI's own Continue Response on a conversation message.

The host sends the message to continue as the last one, names it in `assistant_message_id`,
and appends what the pipe returns to it (utils/middleware.py, `initial_content`).
"""

from __future__ import annotations

import re

import multi_model_conversation as mmc
from tests.fakes import PipeHarness, RecordingEmitter, config, streamed_text

HEADING = re.compile(r"### \S+ ")


async def continue_response(h: PipeHarness, earlier: str, emitter=None, **meta) -> str:
    """What the host does on Continue: the assistant message last, its id in the metadata."""
    user = h.host.users["u1"]
    messages = [
        {"role": "user", "content": "Tea or coffee?"},
        {"role": "assistant", "content": earlier},
    ]
    metadata = {"chat_id": "chat-1", "message_id": "msg-1", "session_id": "s1", **meta}
    result = await h.pipe.pipe(
        {"model": "mmc.Conversation-pipe", "messages": messages, "stream": True},
        __user__={
            "id": user.id,
            "name": user.name,
            "role": user.role,
            "valves": h.pipe.UserValves(),
        },
        __event_emitter__=emitter,
        __event_call__=None,
        __metadata__=metadata,
    )
    return (await streamed_text(result))[0]


async def first_conversation(h: PipeHarness) -> str:
    return await h.run("Tea or coffee?")


async def test_continue_adds_one_round_each_heading_on_its_own_line_and_counts_every_turn():
    h = PipeHarness(models={"a": "A", "b": "B"})
    h.host.chat_configs["chat-1"] = config(
        "a", "b", rounds=2, closing={"model": "a", "alias": "Judge", "prompt": "Decide."}
    )
    earlier = await first_conversation(h)
    earlier = earlier.rstrip("\n") + "\n\nand the last line ends without a newline w39"
    stored = dict(h.host.chat_configs["chat-1"])
    h.host.requests.clear()
    emitter = RecordingEmitter(h.clock)

    added = await continue_response(h, earlier, emitter, assistant_message_id="msg-1")

    whole = earlier + added  # what the host saves and shows
    assert added.startswith("\n\n### "), added[:40]
    for match in HEADING.finditer(whole):
        assert match.start() == 0 or whole[match.start() - 1] == "\n", whole[match.start() - 20 :]
    speakers = [t.speaker for t in mmc.split_turns(whole)]
    assert speakers == ["A", "B", "A", "B", "Judge", "A", "B"], speakers  # one round, no Judge
    assert emitter.contents()[-1] == whole, "the tab's copy is not the whole message"
    assert emitter.statuses()[-1].startswith("2 participants, 6 turns"), emitter.statuses()
    assert h.host.chat_configs["chat-1"] == stored, "Continue changed the chat's setup"
    asked = [r for r in h.host.requests if r["stream"]]
    assert len(asked) == 2 and all("Decide." not in str(r["messages"]) for r in asked)
    assert "w39" in str(asked[0]["messages"]), "the participants did not see what went before"


async def test_what_is_not_a_continue():
    earlier = "### 🔴 A\n\nhello"
    assert (
        mmc.continued_content(
            {"messages": [{"role": "assistant", "content": earlier}]}, {"assistant_message_id": "m"}
        )
        == earlier
    )
    # A new message (no id), or an id with a user message last: a conversation as usual.
    assert (
        mmc.continued_content({"messages": [{"role": "assistant", "content": earlier}]}, {}) == ""
    )
    assert (
        mmc.continued_content(
            {"messages": [{"role": "user", "content": "hi"}]}, {"assistant_message_id": "m"}
        )
        == ""
    )
    assert mmc.continued_content({"messages": []}, {"assistant_message_id": "m"}) == ""


def test_earlier_turns_counts_the_participants_turns_only():
    people = [mmc.Participant(0, "a", "Ada", "", "🔴"), mmc.Participant(1, "b", "Ben", "", "🔵")]
    judge = mmc.Participant(2, "a", "Judge", "", "🟢")
    t = mmc.Transcript(lambda: 0.0)
    for p in (*people, *people):
        t.start_turn(p)
        t.add_content(f"{p.alias} speaks.\n### 🔴 Ada quoted")  # a quoted heading is no turn
    t.add_notice("*⏭️ Ben passed.*")
    t.start_turn(judge)
    t.add_content("Verdict.")
    for p in people:
        t.start_turn(p, label=mmc.VOTE_LABEL)
        t.add_content("VOTE: tea")
    assert mmc.earlier_turns(t.render(), people) == 4


def test_a_vote_turn_is_labelled_and_reads_back_as_its_speakers():
    ada = mmc.Participant(0, "a", "Ada", "", "🔴")
    t = mmc.Transcript(lambda: 0.0)
    t.start_turn(ada)
    t.add_content("Tea.")
    t.start_turn(ada, label=mmc.VOTE_LABEL)
    t.add_content("VOTE: tea")
    assert "### 🔴 Ada · 🗳️ vote\n" in t.render()
    assert [(x.speaker, x.content) for x in mmc.split_turns(t.render())] == [
        ("Ada", "Tea."),
        ("Ada", "VOTE: tea"),
    ]


async def test_after_continue_the_status_and_the_new_usage_block_say_which_part_they_count():
    """Issue 27: the host keeps the continued part as it was (its usage block too) and appends
    this one; the status names the message's turns and this part's turns and seconds, and the
    block this part adds says it counts this part."""
    h = PipeHarness(models={"a": "A", "b": "B"})
    h.pipe.valves.SHOW_USAGE = True
    h.host.chat_configs["chat-1"] = config("a", "b", rounds=2)
    earlier = await first_conversation(h)
    assert "<summary>Usage: " in earlier
    emitter = RecordingEmitter(h.clock)

    added = await continue_response(h, earlier, emitter, assistant_message_id="msg-1")

    status = emitter.statuses()[-1]
    assert re.fullmatch(r"2 participants, 6 turns; this part: 2 turns, \d+ s", status), status
    assert added.count('<details type="usage"') == 1 and "<summary>Usage of this part: " in added
    total = re.search(r"^\| \*\*Total\*\* \| (\d+) \|", added, re.MULTILINE)
    assert total and total.group(1) == "2", added[-600:]
    # A message that is not a continuation says nothing of parts.
    fresh = RecordingEmitter(h.clock)
    whole = await h.run("Again?", emitter=fresh)
    assert "this part" not in fresh.statuses()[-1] and "Usage of this part" not in whole
