"""The usage ledger: what a conversation cost, per speaker, from the backend's own counts."""

from __future__ import annotations

import json
import re

import multi_model_conversation as mmc
from tests.fakes import PipeHarness, Script, config, reply


def usage_frame(prompt: int, completion: int, total: bool = True) -> str:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    if total:
        usage["total_tokens"] = prompt + completion
    return f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"


def counted(text: str, prompt: int, completion: int) -> list[str]:
    """A streamed reply that ends with the backend's usage frame."""
    *frames, done = reply(text)
    return [*frames, usage_frame(prompt, completion), done]


def ledger_rows(transcript: str) -> dict[str, list[str]]:
    """Speaker -> the table's cells after it (model, turns, prompt, completion, seconds).

    The model is under the speaker's name, in the same cell: the table fits a phone."""
    (block,) = re.findall(r'<details type="usage".*?</details>', transcript, re.DOTALL)
    rows = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 5 and cells[1] not in ("Turns", "--:"):
            name, _, model = cells[0].partition("<br>")
            rows[mmc.md_unescape(name.strip("*"))] = [mmc.md_unescape(model), *cells[1:]]
    return rows


def harness() -> PipeHarness:
    h = PipeHarness(models={"a": "Model A", "b": "Model B", "m": "Manager M"})
    h.pipe.valves.SHOW_USAGE = True
    return h


async def test_the_ledger_shows_the_backends_counts_per_speaker_and_their_totals():
    h = harness()
    h.host.chat_configs["chat-1"] = config("a", "b", rounds=2, use_manager=True, manager_model="m")
    h.host.scripts["a"] = Script(
        streams=[counted("one two three", 100, 3), counted("four five", 150, 2)], chunk_delay=0.5
    )
    h.host.scripts["b"] = Script(streams=[counted("six", 120, 1), counted("seven", 180, 1)])
    h.host.scripts["m"] = Script(completions=["A", "B", "A", "B"], counted=(40, 1))

    result = await h.run()

    rows = ledger_rows(result)
    # Model, turns, prompt, completion, seconds: A streamed 2 x (words + usage + [DONE]) chunks
    # at 0.5 fake seconds each.
    assert rows["A"][:5] == ["Model A", "2", "250", "5", f"{(5 + 4) * 0.5:.1f}"]
    assert rows["B"][:4] == ["Model B", "2", "300", "2"]
    assert rows["Manager"][:4] == ["Manager M", "4", "160", "4"]  # its turns: its picks
    # The total's turns are the turns said (the status's); its seconds the conversation's.
    assert rows["Total"][1:5] == ["4", "710", "11", "4.5"]
    assert list(rows) == ["Manager", "A", "B", "Total"]  # in the order they first spoke
    assert "~" not in result and "estimated" not in result
    assert re.search(r"<summary>Usage: 721 tokens, 4 s</summary>", result)
    # The message's own usage carries the totals (Open WebUI's info tooltip shows it).
    usage = {"prompt_tokens": 710, "completion_tokens": 11, "total_tokens": 721}
    assert h.usage_frames == [{"choices": [], "usage": usage}]


async def test_counts_the_backend_did_not_send_are_estimated_and_marked():
    h = harness()
    h.host.chat_configs["chat-1"] = config("a", "b")
    h.host.scripts["a"] = Script(streams=[counted("fine", 90, 1)])
    h.host.scripts["b"] = Script(streams=[reply("x" * 40)])  # no usage frame

    result = await h.run()

    rows = ledger_rows(result)
    assert rows["A"][1:3] == ["1", "90"]
    b_sent = h.host.requests[1]["messages"]
    chars = sum(len(mmc._text_of(m["content"])) for m in b_sent)
    assert rows["B"][2:4] == [f"~{-(-chars // 4):,}", "~10"]
    assert rows["Total"][2].startswith("~")
    assert "~ estimated (the backend sent no counts)" in result


async def test_a_usage_frame_without_a_total_still_counts():
    events = mmc.decode_frame(usage_frame(30, 5, total=False)[6:].strip())
    assert [(e.kind, e.count, e.index) for e in events] == [("usage", 30, 35)]
    bools = json.dumps({"choices": [], "usage": {"prompt_tokens": True, "completion_tokens": 3}})
    assert [(e.kind, e.count, e.index) for e in mmc.decode_frame(bools)] == [("usage", 0, 3)]


async def test_no_model_reads_the_ledger_in_a_later_message():
    h = harness()
    h.host.chat_configs["chat-1"] = config("a", "b")
    first = await h.run("Discuss tea.")
    assert ledger_rows(first)
    h.host.requests.clear()

    await h.run("Go on.", history=[{"role": "user", "content": "Discuss tea."},
                                   {"role": "assistant", "content": first}])  # fmt: skip

    sent = json.dumps([r["messages"] for r in h.host.requests])
    assert "Usage" not in sent and "Tokens in" not in sent and "details" not in sent
    assert "a reply 1" in sent  # the turns themselves are read


async def test_the_valve_switches_the_table_off():
    h = harness()
    h.pipe.valves.SHOW_USAGE = False
    h.host.chat_configs["chat-1"] = config("a", "b")

    result = await h.run()

    assert 'type="usage"' not in result and "Usage:" not in result


async def test_a_request_that_does_not_stream_gets_the_transcript_as_text():
    h = harness()
    h.host.chat_configs["chat-1"] = config("a")
    result = await h.pipe.pipe(
        {"model": "mmc.Conversation-pipe", "messages": [{"role": "user", "content": "Hi"}]},
        __user__={"id": "u1", "name": "Ann", "role": "user", "valves": h.pipe.UserValves()},
        __metadata__={"chat_id": "chat-1"},
    )
    assert isinstance(result, str) and 'type="usage"' in result
