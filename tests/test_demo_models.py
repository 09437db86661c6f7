"""The demo's models (scripts/demo_models.py) answer in kind, read from what the pipe sends.

Most tests run the real pipe on the fake host with the writer behind every model, so the
requests are the ones the pipe builds (persona and rules in the system prompt, the others'
turns as `Name said: "…"`, the user's words between rounds, the ranking and vote questions).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import sys
from pathlib import Path

import multi_model_conversation as mmc
from tests.fakes import FakeHost, PipeHarness, Script, reply

spec = importlib.util.spec_from_file_location(
    "demo_models", Path(__file__).parents[1] / "scripts" / "demo_models.py"
)
demo = importlib.util.module_from_spec(spec)
sys.modules["demo_models"] = demo  # dataclasses look their module up
spec.loader.exec_module(demo)

MODELS = {
    "scripted-optimist": "Optimist",
    "scripted-engineer": "Engineer",
    "scripted-critic": "Critic",
}
PERSONAS = {  # scripts/demo_setup.py's three
    "Ada": "You are Ada, an optimistic inventor. Argue for bold ideas.",
    "Grace": "You are Grace, a pragmatic engineer. Ask what an idea costs and how to test it.",
    "Linus": "You are Linus, a blunt reviewer. Name the weakest argument so far and say why.",
}
TOPIC = "Should we rewrite our billing service in Rust?"


class DemoHost(FakeHost):
    """The fake host with the demo writer behind every model, streamed and plain."""

    async def stream_chat(self, form: dict, user):
        self.requests.append({**form, "stream": True})
        for piece in reply(demo.write(form["model"], form["messages"])):
            await asyncio.sleep(0)
            yield piece

    async def complete(self, form: dict, user) -> str:
        self.requests.append({**form, "stream": False})
        self.scripts.setdefault(form["model"], Script())
        return demo.write(form["model"], form["messages"])


class Words:
    """Answers the moderator's prompts like the user does: one answer per round boundary."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)

    async def __call__(self, event: dict) -> str:
        return self.answers.pop(0) if self.answers else ""


def harness(**config) -> PipeHarness:
    h = PipeHarness(models=MODELS)
    h.host = DemoHost(h.clock, MODELS)
    h.pipe.gateway_factory = lambda request: h.host
    participants = [
        {"model": model, "alias": alias, "system_message": persona}
        for model, (alias, persona) in zip(MODELS, PERSONAS.items(), strict=True)
    ]
    h.host.chat_configs["chat-1"] = {"participants": participants, **config}
    return h


def turns(transcript: str) -> dict[str, list[str]]:
    """Each heading's texts, reasoning left out, in order."""
    out: dict[str, list[str]] = {}
    for heading, body in re.findall(
        r"^### \S+ ([^\n]+)\n(.*?)(?=^### |\Z)", transcript, re.M | re.S
    ):
        body = re.sub(r"<details.*?</details>", "", body, flags=re.S)
        out.setdefault(heading, []).append(body.strip())
    return out


async def test_each_persona_speaks_in_its_own_voice_and_answers_the_one_before_by_name():
    said = turns(await harness(rounds=2).run(TOPIC))
    ada, grace, linus = said["Ada"], said["Grace"], said["Linus"]
    assert "rewrite our billing service in Rust" in ada[0]  # the topic, in Ada's words
    assert re.search(r"bold|aim high", ada[0], re.I)
    assert "Ada" in grace[0] and re.search(r"cost|spike", grace[0])  # builds on Ada
    assert "Grace" in linus[0] and re.search(r"weakest|evidence|Isn't|isn't", linus[0])
    assert "Linus" in ada[1]  # round 2 opens on the last speaker of round 1
    assert len({*ada, *grace, *linus}) == 6  # no turn repeats another


async def test_the_moderators_words_are_answered_by_the_one_they_name_and_heard_by_all():
    h = harness(rounds=2, moderator="between_rounds")
    said = turns(
        await h.run(TOPIC, event_call=Words("Linus, name the one risk that worries you most."))
    )
    assert said["Linus"][1].startswith("Ann, you asked me") or said["Linus"][1].startswith(
        "You asked me"
    )
    assert "The one risk I'd name" in said["Linus"][1]
    assert "Linus" in said["Ada"][1] and "risk I'd name" not in said["Ada"][1]
    assert all("asked me" not in t for t in said["Ada"] + said["Grace"])


async def test_unnamed_words_are_taken_up_by_everyone():
    h = harness(rounds=2, moderator="between_rounds")
    said = turns(await h.run(TOPIC, event_call=Words("What would it cost?")))
    for alias in PERSONAS:
        assert "On your point, “What would it cost”: My number:" in said[alias][1], alias


async def test_pass_only_where_the_rules_allow_it_and_a_vote_with_a_vote_line_each():
    allowed = await harness(rounds=3, pass_allowed=True, closing="vote").run(TOPIC)
    assert "*⏭️ Linus passed.*" in allowed  # the last turn has nothing to add
    assert re.search(r"\*🗳️ Vote: Yes, with a pilot first 2 \(Ada, Grace\\\) · Not yet 1", allowed)
    not_allowed = await harness(rounds=3, closing="vote").run(TOPIC)
    assert "passed" not in not_allowed
    # The user's words between rounds are answered, not passed over.
    h = harness(rounds=3, pass_allowed=True, moderator="between_rounds")
    heard = await h.run(TOPIC, event_call=Words("", "Grace, what would a pilot cost?"))
    assert "passed" not in heard.split("### 🗣️ Ann")[1]


async def test_a_council_ranks_the_answers_and_the_chair_builds_on_the_ranking():
    h = harness(rounds=1, preset="council")
    h.host.chat_configs["chat-1"]["participants"] = [{"model": m} for m in MODELS]
    transcript = await h.run("What is the best first programming language?")
    assert "Peer review, combined:*\n\n| # | Answer by | Points | Placed by |" in transcript
    assert "no reviewer gave a ranking" not in transcript
    top = re.search(r"^\| 1 \| (\w+) \| (\d+) \|", transcript, re.M)
    chair = turns(transcript)["Chair"][0]
    assert chair.startswith(f"**Synthesis.** The council ranked {top[1]}'s answer first ({top[2]}")
    others = {"Analyst", "Expert", "Contrarian"} - {top[1]}
    assert all(name in chair for name in others)


def test_a_review_ranks_every_response_once_in_the_plugins_format():
    answers = ["I'm all for it, aim high.", "A two-week spike with one metric, then decide."]
    messages = [
        {
            "role": "system",
            "content": "Answer as a domain expert, precisely.\n\n" + mmc.REVIEW_RULES,
        },
        {"role": "user", "content": f"{TOPIC}\n\n{mmc.review_ask(answers)}"},
    ]
    said = demo.write("m", messages)
    assert mmc.parse_ranking(said, 2) == [1, 0]  # the concrete answer first


def test_a_vote_reads_as_the_plugin_reads_it_and_follows_the_topics_options():
    messages = [
        {"role": "system", "content": f"{PERSONAS['Linus']}\n\n{mmc.VOTE_PROMPT}"},
        {"role": "user", "content": f"Tea or coffee?\n\n{mmc.VOTE_PROMPT}"},
    ]
    assert mmc.parse_vote(demo.write("m", messages)) == "Coffee"
    messages[0]["content"] = f"{PERSONAS['Ada']}\n\n{mmc.VOTE_PROMPT}"
    assert mmc.parse_vote(demo.write("m", messages)) == "Tea"


def test_the_hosts_background_tasks_get_the_json_they_ask_for():
    history = f"<chat_history>\nUSER: {TOPIC}\nASSISTANT: ### 🔴 Ada\n\nYes.\n</chat_history>"
    for key, prompt in (
        ("title", 'JSON format: { "title": "your concise title here" }'),
        ("tags", 'JSON format: { "tags": ["tag1", "tag2", "tag3"] }'),
        ("follow_ups", 'JSON format: { "follow_ups": ["Suggested next message 1"] }'),
    ):
        messages = [{"role": "user", "content": f"### Task:\n{prompt}\n{history}"}]
        answer = demo.write("m", messages)
        task = {"title": "title_generation", "tags": "tags_generation"}.get(
            key, "follow_up_generation"
        )
        kept = mmc.task_answer(task, answer, messages[0]["content"])
        assert kept and json.loads(kept) == json.loads(answer), key
        assert json.loads(answer)[key]
    # Without a quoted chat it still answers the shape asked for.
    assert json.loads(demo.write("m", [{"role": "user", "content": f"### Task:\n{prompt}"}]))


def test_a_manager_is_answered_with_a_name_the_plugin_accepts():
    prompt = mmc.DEFAULT_MANAGER_PROMPT.format(
        history="Ann: hi\nAda: Let's ask @Linus about it.",
        last_speaker="Ada",
        participant_list="Ada, Grace, Linus",
    )
    messages = [
        {"role": "system", "content": mmc.DEFAULT_MANAGER_SYSTEM},
        {"role": "user", "content": prompt},
    ]
    answer = demo.write("m", messages)
    assert mmc.manager_pick(answer, ["Ada", "Grace", "Linus"], 0) == (2, "")  # the named one
    plain = prompt.replace("@Linus", "someone")
    messages[1]["content"] = plain
    assert demo.write("m", messages) == "Grace"  # else the next after the last speaker


def test_the_same_request_gets_the_same_reply_and_another_request_another():
    messages = [
        {
            "role": "system",
            "content": f"{PERSONAS['Grace']}\n\n"
            + mmc.DEFAULT_SHARED_INSTRUCTION.format(alias="Grace", others="Ada, Linus"),
        },
        {"role": "user", "content": f'{TOPIC}\n\nAda said: "I am for it, aim high."'},
    ]
    first = demo.write("scripted-engineer", messages)
    assert demo.write("scripted-engineer", json.loads(json.dumps(messages))) == first
    other = [
        messages[0],
        {"role": "user", "content": messages[1]["content"].replace("Ada", "Linus")},
    ]
    assert demo.write("scripted-engineer", other) != first


async def test_a_long_conversation_never_repeats_a_line_so_nothing_is_cut_as_an_echo():
    h = harness(rounds=5, pass_allowed=True, moderator="between_rounds")
    transcript = await h.run(TOPIC, event_call=Words("", "What would it cost?", "", ""))
    assert "began repeating" not in transcript
    said = [t for texts in turns(transcript).values() for t in texts]
    assert len(said) == len(set(said)) > 10


def test_the_topic_is_read_for_its_idea_its_name_and_its_options():
    topic = demo.Topic.of("Should we move our CI from Jenkins to GitHub Actions?")
    assert topic.idea == "the plan to move our CI from Jenkins to GitHub Actions"
    assert topic.focus == "GitHub Actions"
    assert topic.options == ("Yes, with a pilot first", "Not yet")
    assert demo.Topic.of("Tea or coffee?").options == ("Tea", "Coffee")
    assert demo.Topic.of("@Linus you go first: how do we cut costs?").idea == "a plan to cut costs"


async def test_a_mention_picks_the_first_speaker_and_each_turn_hands_over_to_one_still_waiting():
    h = harness(rounds=1, selection="mention")
    transcript = await h.run("@Linus you go first: should we rewrite our billing service in Rust?")
    said = turns(transcript)
    assert list(said) == ["Linus", "Ada", "Grace"]
    assert said["Linus"][0].endswith("@Ada, what would you change?")
    assert said["Ada"][0].endswith("@Grace, what would you change?")
    assert "@" not in said["Grace"][0]  # nobody is left to hand over to
    # Without a mention in the user's message nobody hands over.
    plain = turns(await harness(rounds=1, selection="mention").run(TOPIC))
    assert not any("@" in t for texts in plain.values() for t in texts)
