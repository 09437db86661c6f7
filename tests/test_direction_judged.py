"""Issue 18: the Direction and the TurnStreamer on their own, and direction judged right
(endings, votes, rounds in random order, a manager heard only when it answers)."""

from __future__ import annotations

import json
import random
import re

import pytest

import multi_model_conversation as mmc
from tests.fakes import FakeClock, FakeHost, PipeHarness, Script, config, reply

ALIASES = ["Alice", "Bob", "Carol"]


def speakers(transcript: str) -> list[str]:
    return re.findall(r"^### \S+ (.+)$", transcript, re.MULTILINE)


def streamed(h: PipeHarness) -> list[dict]:
    return [r for r in h.host.requests if r["stream"]]


def participants(*aliases: str) -> list[mmc.Participant]:
    return [mmc.Participant(i, a.lower(), a, "", mmc.mark_for(i)) for i, a in enumerate(aliases)]


def direction(raw: dict, policy=None, aliases=ALIASES, closer=None) -> mmc.Direction:
    cfg = mmc.parse_config(
        {"participants": [{"model": a.lower(), "alias": a} for a in aliases], **raw}, 20
    )
    people = participants(*aliases)
    d = mmc.make_direction(cfg, people, closer, [], None, random.Random(1), FakeClock())
    if policy is not None:
        d.policy = policy
    return d


# -- Direction: endings -------------------------------------------------------------------------


async def test_everyone_passed_means_every_participant_since_the_last_spoken_turn():
    d = direction({"rounds": 5, "pass_allowed": True})
    alice, bob, carol = d.participants
    for who in (alice, bob, alice):  # A, B, A passing: Carol was never asked
        d.heard(mmc.TurnPlan(who), mmc.Heard("PASS", passed=True), 0)
    assert d.reason == ""
    d.heard(mmc.TurnPlan(bob), mmc.Heard("I have a point.", passed=False), 0)
    for who in (alice, carol, alice):  # a spoken turn starts the count again
        d.heard(mmc.TurnPlan(who), mmc.Heard("PASS", passed=True), 0)
    assert d.reason == ""
    d.heard(mmc.TurnPlan(bob), mmc.Heard("PASS", passed=True), 0)
    assert d.reason == "everyone passed" and d.outcome == "everyone passed"


@pytest.mark.parametrize(
    "said",
    [
        "I do not think we agree yet.",
        "Once we agree, someone should say WE AGREE.",
        "> We agree\nis what Bob wants us to say, but not yet.",
        "We agreed on nothing.",
    ],
)
def test_the_stop_phrase_inside_a_sentence_does_not_end_it(said):
    d = direction({"rounds": 5, "stop_phrase": "WE AGREE"})
    d.heard(mmc.TurnPlan(d.participants[0]), mmc.Heard(said), 0)
    assert d.reason == ""


@pytest.mark.parametrize("said", ["We agree.", "Good.\n**We agree!**", "  we   AGREE  \nBye"])
def test_the_stop_phrase_as_a_line_of_its_own_ends_it(said):
    d = direction({"rounds": 5, "stop_phrase": "WE AGREE"})
    d.heard(mmc.TurnPlan(d.participants[1]), mmc.Heard(said), 0)
    assert d.reason == "Bob said the stop phrase “WE AGREE”"


def test_turn_rules_say_the_stop_phrase_goes_on_a_line_of_its_own():
    d = direction({"rounds": 2, "stop_phrase": "WE AGREE"})
    assert "say “WE AGREE” to end it (on a line of its own)" in d.turn_rules(0)


# -- Direction: votes -----------------------------------------------------------------------


def test_a_vote_is_the_last_vote_line_of_the_reply():
    assert mmc.parse_vote("I would vote - hmm, no. VOTE: Tea") == ""  # not at a line start
    assert mmc.parse_vote("I would vote - hmm, no.\nVOTE: Tea") == "Tea"
    assert mmc.parse_vote("VOTE: Coffee\nOn reflection:\nVOTE: Tea - calmer") == "Tea"
    assert mmc.parse_vote("> VOTE: Tea\n**Vote:** Coffee") == "Coffee"
    assert mmc.parse_vote("My vote goes to tea.") == ""  # no VOTE line: an abstention


def test_a_vote_without_a_vote_line_is_shown_as_an_abstention():
    d = direction({"rounds": 1, "closing": "vote"})
    closing = d.closing()
    line, plans = closing.next()
    assert line == "" and [p.kind for p in plans] == ["vote"] * 3
    assert not any(p.guarded for p in plans)
    said = ["VOTE: Tea", "Tea is nice and coffee too, I cannot decide.", "VOTE: tea!"]
    closing.heard(plans, [mmc.Heard(s) for s in said])
    assert closing.next() is None
    line = closing.verdict()
    assert mmc.md_unescape(line) == "*🗳️ Vote: Tea 2 (Alice, Carol); abstained: Bob*"


# -- Direction: random order has rounds ---------------------------------------------------------


@pytest.mark.parametrize("seed", range(30))
async def test_random_order_is_a_fresh_shuffle_each_round(seed):
    policy = mmc.ShuffledRounds(3, random.Random(seed), previous=2)
    order, last = [], None
    for slot in range(9):
        last = (await policy.pick(slot, last)).index
        order.append(last)
    rounds = [order[i : i + 3] for i in range(0, 9, 3)]
    assert all(sorted(r) == [0, 1, 2] for r in rounds), order  # everyone once a round
    assert all(a != b for a, b in zip([2, *order], order, strict=False)), order  # no twice in a row


async def test_a_random_brainstorm_gives_everyone_a_turn_in_every_round():
    h = PipeHarness(models={"d": "Dreamer", "b": "Builder", "s": "Skeptic"})
    h.pipe.rng_factory = lambda: random.Random(3)
    h.host.chat_configs["chat-1"] = config("d", "b", "s", rounds=3, selection="random")

    for message in range(2):  # and on the follow-up
        result = await h.run(history=[{"role": "user", "content": "x"}] * message)
        order = speakers(result)
        assert [sorted(order[i : i + 3]) for i in (0, 3, 6)] == [["B", "D", "S"]] * 3, order


# -- the manager ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "last", "picked"),
    [
        ("<think>Alice spoke, then Bob…</think>Carol", 0, 2),
        ("<think>Alice? Bob?</think>\n\nCarol", None, 2),
        ("Ana, Ben and Carol could all speak.\nBob", 0, 1),  # the lone name on the last line
        ("Carol", None, 2),
        ("I pick **Bob**.", 0, 1),  # one name in a sentence
        (
            "What a great question! Let's explore the possibilities with Alice, Bob, and Carol.",
            0,
            None,
        ),
        ("Choose exactly one of: Alice, Bob, Carol", None, None),
        ("The last speaker was 'Alice'. Who should speak next?", 0, None),
        ("<think>Bob is the obvious", None, None),  # cut while thinking: no answer yet
    ],
)
def test_a_manager_answer_picks_only_a_name_it_gives(answer, last, picked):
    assert mmc.manager_pick(mmc.strip_reasoning(answer).strip(), ALIASES, last)[0] == picked


class ScriptedManager:
    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.asked: list[tuple[list[dict], int]] = []

    async def __call__(self, messages: list[dict], max_tokens: int) -> str:
        self.asked.append(([dict(m) for m in messages], max_tokens))
        return self.answers.pop(0)


def manager(ask, statuses: list[str], max_tokens: int = 400) -> mmc.ManagerChoice:
    def prompt(last):
        return mmc.manager_prompt(mmc.DEFAULT_MANAGER_PROMPT, "Ann: hi", ALIASES, last)

    def status(text, done=True):
        statuses.append(text)

    return mmc.ManagerChoice(ask, prompt, "system", ALIASES, status, max_tokens)


async def test_an_echoing_manager_is_not_heard_and_the_fallback_is_one_short_line():
    """Issue 29.10: re-asked once (not twice); the two failures retire it for the run."""
    echo = "What a great question! Let's explore the possibilities with Alice, Bob, and Carol."
    ask, statuses = ScriptedManager(echo, "Choose exactly one of: Alice, Bob, Carol", echo), []

    pick = await manager(ask, statuses).pick(1, 0)

    assert pick.index == 1 and pick.why == ""  # round robin after Alice: Bob
    (line,) = statuses
    assert "\n" not in line and len(line) <= 120, line
    assert line.startswith("Manager gave no usable name") and "(Bob next)" in line
    assert len(ask.asked) == 2
    assert all(n == mmc.MANAGER_ANSWER_TOKENS for _, n in ask.asked)
    assert "answer with one name only" in ask.asked[1][0][-1]["content"]


async def test_the_manager_prompt_reads_right_on_the_first_pick():
    ask, statuses = ScriptedManager("Bob"), []

    await manager(ask, statuses).pick(0, None)

    prompt = ask.asked[0][0][1]["content"]
    assert "'None'" not in prompt and "Nobody has spoken yet." in prompt
    assert "nothing else.\n\nIf the conversation has reached its goal" in prompt


async def test_a_thinking_manager_gets_room_to_think_and_a_small_limit_is_kept():
    ask, statuses = ScriptedManager("<think>Let me weigh Alice against", "Bob"), []
    await manager(ask, statuses, max_tokens=0).pick(1, 0)
    assert [n for _, n in ask.asked] == [mmc.MANAGER_ANSWER_TOKENS, mmc.MANAGER_THINKING_TOKENS]
    # The admin's MAX_TOKENS still bounds it.
    bounded, statuses = ScriptedManager("<think>Let me weigh Alice against", "Bob"), []
    await manager(bounded, statuses, max_tokens=400).pick(1, 0)
    assert [n for _, n in bounded.asked] == [mmc.MANAGER_ANSWER_TOKENS, 400]

    small, statuses = ScriptedManager("<think>hmm", "Bob"), []
    await manager(small, statuses, max_tokens=20).pick(1, 0)
    assert [n for _, n in small.asked] == [20, 20]


# -- the closing and votes are never cut by the speaker guard -----------------------------------

VERDICT = (
    "**Pro:** cited three studies.\n"
    "**Con:** relied on anecdotes.\n"
    "Pro: clearly stronger.\n"
    "Verdict: Pro wins, because the evidence was better."
)


async def test_a_judges_verdict_that_names_every_side_is_kept_whole():
    h = PipeHarness(models={"p": "P", "c": "C", "j": "J"})
    h.host.chat_configs["chat-1"] = {
        "rounds": 1,
        "participants": [{"model": "p", "alias": "Pro"}, {"model": "c", "alias": "Con"}],
        "closing": {"model": "j", "alias": "Judge", "prompt": "Give a verdict."},
    }
    h.host.scripts["j"] = Script(streams=[reply(VERDICT)])

    result = await h.run("Motion: tea beats coffee.")

    assert result.rstrip().endswith("Verdict: Pro wins, because the evidence was better.")
    judge = streamed(h)[-1]
    assert judge["model"] == "j" and "stop" not in judge
    assert all("stop" in r for r in streamed(h)[:-1])  # participants still get theirs
    # The whole verdict is in history for the next message.
    follow = await h.run(
        "And now?",
        history=[{"role": "user", "content": "x"}, {"role": "assistant", "content": result}],
    )
    assert "Verdict: Pro wins" in str(streamed(h)[-3]["messages"]) and speakers(follow)


async def test_vote_turns_are_not_guarded_either():
    h = PipeHarness(models={"a": "A", "b": "B"})
    h.host.chat_configs["chat-1"] = config("a", "b", closing="vote")
    h.host.scripts["a"] = Script(streams=[reply("x"), reply("B: made the better case.\nVOTE: B")])

    result = await h.run()

    assert "B: made the better case." in mmc.md_unescape(result)
    assert "stop" not in streamed(h)[2]
    assert mmc.md_unescape(result).endswith("*🗳️ Vote: B 1 (A); abstained: B*")


# -- the TurnStreamer on its own ----------------------------------------------------------------


def streamer(host: FakeHost, clock: FakeClock, turns: list[mmc.Turn]) -> mmc.TurnStreamer:
    transcript = mmc.Transcript(clock.now)
    emitter = mmc.CoalescingEmitter(None, transcript.render, 1 / 30, clock)
    profiles = {m: mmc.ModelProfile(m, m.upper(), {"id": m}) for m in ("a", "b")}
    ctx = mmc.RequestContext(None, {}, [], {}, None, {})
    settings = mmc.Settings(mmc.Pipe.Valves())
    return mmc.TurnStreamer(
        host,
        ctx,
        settings,
        transcript,
        emitter,
        clock,
        mmc.ContextBudget(8192),
        profiles=profiles,
        aliases=["A", "B"],
        user_name="Ann",
        turns=turns,
    )


async def test_the_streamer_speaks_a_turn_and_remembers_it_and_a_pass_leaves_one_line():
    clock = FakeClock()
    host = FakeHost(clock, {"a": "A", "b": "B"})
    host.scripts["a"] = Script(streams=[reply("Tea is best.\nB: No, coffee!")])
    host.scripts["b"] = Script(streams=[reply("PASS")])
    turns = [mmc.Turn(None, "Tea or coffee?")]
    s = streamer(host, clock, turns)
    a, b = participants("A", "B")
    for p in (a, b):
        object.__setattr__(p, "model_id", p.alias.lower())

    heard_a = await s.turn(mmc.TurnPlan(a, rules="Round 1 of 1."))
    heard_b = await s.turn(mmc.TurnPlan(b, pass_allowed=True))

    assert heard_a == mmc.Heard("Tea is best.", False)  # the guard ended it at B's line
    assert heard_b.passed and [t.speaker for t in turns] == [None, "A"]
    text = s.transcript.render()
    # issue 26: A's line as B is folded under A's turn, not deleted
    assert "B: No, coffee" not in mmc.BLOCK_RE.sub("", text) and "B: No, coffee!" in text
    assert text.endswith("*⏭️ B passed.*\n\n")
    first = host.requests[0]
    assert first["stop"] and "Round 1 of 1." in first["messages"][0]["content"]
    assert first["messages"][-1] == {"role": "user", "content": "Tea or coffee?"}


# -- the echo guard, wired into a participant's turn ----------------------------------------------

LONG = (
    "We should ship the smaller model first because it answers fast enough on the laptops we "
    "have, costs nothing per request, and lets us learn what users actually ask before we spend "
    "money on a bigger one that we may not need at all in the end."
)


async def test_a_turn_that_copies_an_earlier_turn_ends_there_and_the_copy_is_not_heard():
    h = PipeHarness(models={"a": "Ana", "b": "Ben", "c": "Chen"})
    h.host.chat_configs["chat-1"] = config("a", "b", "c")
    h.host.scripts["a"] = Script(streams=[reply(LONG)])
    h.host.scripts["b"] = Script(streams=[reply(f"I agree. {LONG} And more.")])

    result = await h.run()

    b_turn = result[result.index("### 🔵 B") : result.index("### 🟢 C")]
    shown, folded = mmc.BLOCK_RE.sub("", b_turn), b_turn.split('<details type="cut"')[1]
    assert shown.count("money on a bigger one") == 0 and "I agree." in shown
    # issue 26: the copy is folded under the turn, and the fold's summary is the cut's mark
    assert "<summary>✂️ B began repeating what was already said — not heard" in folded
    assert "money on a bigger one" in folded  # what arrived before the stream was closed
    c_view = json.dumps(streamed(h)[2]["messages"])
    assert c_view.count("laptops we have") == 1 and "repeating" not in c_view


async def test_a_turn_that_is_only_the_pipes_own_note_is_cut_and_a_quote_is_not():
    h = PipeHarness(models={"a": "Ana", "b": "Ben"})
    h.host.records["a"] = mmc_record(num_ctx=1500)
    h.host.chat_configs["chat-1"] = config("a", "b")
    history = []
    for i in range(12):
        history += [
            {"role": "user", "content": f"question {i} " + "word " * 60},
            {"role": "assistant", "content": f"### 🔴 A\n\nanswer {i} " + "text " * 60},
        ]
    original = h.host.stream_chat

    async def parrot(form, user):  # A answers with the very note the pipe showed it
        if form["model"] != "a":
            async for piece in original(form, user):
                yield piece
            return
        h.host.requests.append({**form, "stream": True})
        shown = " ".join(mmc._text_of(m["content"]) for m in form["messages"])
        note = re.search(r"\(\d+ earlier turns of this conversation left out\.\)", shown)
        for piece in reply(note.group(0)):
            yield piece

    h.host.stream_chat = parrot
    quoted = f'Ana said "{LONG[:120]}" and I only half agree.'
    h.host.scripts["b"] = Script(streams=[reply(quoted)])

    result = await h.run("Go on", history=history)

    a_turn = result.split("### 🔵 B")[0]
    assert "left out" not in mmc.BLOCK_RE.sub("", a_turn) and "repeating" in a_turn
    assert "left out" in a_turn.split('<details type="cut"')[1]  # folded (issue 26)
    assert quoted.replace('"', "") in mmc.md_unescape(result).replace('"', "")  # a quote stays


def mmc_record(**params):
    from types import SimpleNamespace

    return SimpleNamespace(params=params, meta={})
