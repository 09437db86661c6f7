"""Issue 29.3: the request's own message is always kept, also when the user's words typed
between rounds come after it (on the old fitter those words became the "latest user
message", and a paste sent with the request could be left out whole)."""

from __future__ import annotations

from types import SimpleNamespace

import multi_model_conversation as mmc
from tests.fakes import PipeHarness, Script, reply

T = mmc.Turn


def paste(n: int) -> str:
    return "PASTE-START " + "the figures grew a little " * (n // 26) + " PASTE-END"


def test_the_request_message_stays_when_words_between_rounds_follow_it():
    turns = [
        T(None, "TOPIC: our budget"),
        T("Ana", "a" * 3000),
        T(None, paste(6000)),  # the request's own message
        T("Ana", "b" * 3000),
        T("Ben", "c" * 3000),
        T(None, "Focus on the risks.", between_rounds=True),
        T("Ana", "d" * 500),
    ]
    fitted = mmc.fit_turns(turns, 6000)

    assert fitted is not None
    text = "\n".join(mmc._text_of(t.content) for t in fitted.turns)
    assert "TOPIC" in text and "PASTE-START" in text and "PASTE-END" in text
    assert "Focus on the risks." in text
    assert mmc.protected_turns(turns) == {0, 2, 5}
    # Words between rounds in an earlier message are the user's, but not this request's.
    older = [T(None, "TOPIC"), T(None, "old words", between_rounds=True), T("Ana", "x")]
    assert mmc.protected_turns([*older, T(None, "new message")]) == {0, 3}


def test_what_must_not_change_the_topic_and_the_latest_message_stay_older_turns_go():
    turns = [T(None, "TOPIC"), *[T("Ana" if i % 2 else "Ben", f"turn{i} " * 200) for i in range(8)]]
    turns.append(T(None, "LATEST question"))
    fitted = mmc.fit_turns(turns, 4000)

    assert fitted is not None and fitted.omitted > 0
    kept = [mmc._text_of(t.content) for t in fitted.turns if not t.note]
    assert kept[0] == "TOPIC" and kept[-1] == "LATEST question"
    assert "turn0 " not in "".join(kept)  # the oldest went first


class Prompt:
    def __init__(self, *answers) -> None:
        self.answers = list(answers)

    async def __call__(self, event: dict):
        return self.answers.pop(0)


async def test_a_paste_sent_with_the_request_reaches_every_speaker_after_the_moderators_words():
    h = PipeHarness(models={"a": "Ana", "b": "Ben"})
    for model in ("a", "b"):
        h.host.records[model] = SimpleNamespace(params={"num_ctx": 2000}, meta={})
    for model, words in (("a", "numbers {} matter"), ("b", "costs {} rise")):
        h.host.scripts[model] = Script(
            streams=[reply(f"{words.format(i)}, " * 50) for i in range(4)]
        )
    h.host.chat_configs["chat-1"] = {
        "rounds": 4,
        "moderator": "between_rounds",
        "participants": [{"model": "a", "alias": "Ana"}, {"model": "b", "alias": "Ben"}],
    }
    earlier = [
        f"### {'🔴 Ana' if i % 2 else '🔵 Ben'}\n\n" + f"earlier {i} " * 70 for i in range(6)
    ]
    history = [
        {"role": "user", "content": "TOPIC: our budget " + "context " * 60},
        {"role": "assistant", "content": "\n\n".join(earlier)},
    ]

    await h.run(paste(7000), history=history, event_call=Prompt("Focus on the risks.", "", ""))

    streamed = [r for r in h.host.requests if r["stream"]]
    assert len(streamed) == 8
    for request in streamed:
        seen = "\n".join(mmc._text_of(m.get("content")) for m in request["messages"])
        assert "PASTE-START" in seen and "PASTE-END" in seen, seen[:300]
    last = "\n".join(mmc._text_of(m.get("content")) for m in streamed[-1]["messages"])
    assert "Focus on the risks." in last
