"""Ollama models on the fake host: what the pipe asks of them is what Ollama reads.

Open WebUI 0.12.4 rewrites a request for an Ollama model (`convert_payload_openai_to_ollama`)
and keeps only `options`, `stop` and `max_tokens`; the live tests (tests/integration/
test_ollama_live.py) check the same through the real host and a scripted Ollama server.
"""

from __future__ import annotations

import json
import re

import multi_model_conversation as mmc
from tests.fakes import PipeHarness, Script, chunk, config

SAMPLING = {"temperature": 0.3, "top_p": 0.55, "top_k": 17}


def harness(**owners: str) -> PipeHarness:
    """Models a, b (and the manager m) owned by whom `owners` says; "openai" otherwise."""
    h = PipeHarness(models={"a": "A", "b": "B", "m": "M"})
    for model_id, owner in owners.items():
        h.host.models[model_id]["owned_by"] = owner
    return h


def user_valves(h: PipeHarness) -> object:
    return h.pipe.UserValves(Temperature=0.3, Top_p=0.55, Top_k=17)


def profile(owner: str, context: int = 0) -> mmc.ModelProfile:
    return mmc.ModelProfile(owner, "X", {}, owned_by=owner, context_tokens=context)


# -- the request's shape ---------------------------------------------------------------------


def test_an_ollama_request_carries_sampling_bounds_and_context_in_options():
    form = {"model": "x", "messages": [], "max_tokens": 400, "stop": ["\nB:"], **SAMPLING}
    form["stream_options"] = {"include_usage": True}

    sent = mmc.for_backend(form, profile("ollama"), num_ctx=4096)

    assert sent == {
        "model": "x",
        "messages": [],
        "options": {**SAMPLING, "stop": ["\nB:"], "num_predict": 400, "num_ctx": 4096},
    }
    assert form["temperature"] == 0.3, "the caller's form is left as it was"


def test_an_openai_style_request_keeps_its_fields_on_top_and_loses_top_k():
    form = {"model": "x", "messages": [], "max_tokens": 400, "stop": ["\nB:"], **SAMPLING}

    sent = mmc.for_backend(form, profile("openai"), num_ctx=4096)

    assert sent == {k: v for k, v in form.items() if k != "top_k"}
    assert "options" not in sent and "num_ctx" not in json.dumps(sent)


def test_an_ollama_request_without_a_context_to_ask_for_sends_no_num_ctx():
    sent = mmc.for_backend({"model": "x", "messages": [], "temperature": 1.0}, profile("ollama"))
    assert sent["options"] == {"temperature": 1.0}


async def test_every_request_to_an_ollama_model_has_the_same_options_and_num_ctx():
    """Turns, the plain retry and the manager: one shape, one num_ctx (a change reloads it)."""
    h = harness(a="ollama", m="ollama")
    h.host.chat_configs["chat-1"] = config("a", "b", rounds=2, use_manager=True, manager_model="m")
    h.host.scripts["m"] = Script(completions=["A", "B", "A", "B"])
    h.host.scripts["a"] = Script(streams=[[chunk(content="")]])  # empty: a plain retry follows

    await h.run(user_valves=user_valves(h))

    to_a = [r for r in h.host.requests if r["model"] == "a"]
    assert [r["stream"] for r in to_a] == [True, False, True]
    for request in to_a:
        options = request["options"]
        assert {k: options[k] for k in SAMPLING} == SAMPLING
        assert options["num_predict"] == 400 and options["num_ctx"] == 4096
        assert options["stop"][0] == '\nB said: "'
        assert not {"temperature", "top_p", "top_k", "max_tokens", "stop"} & set(request)
    managed = [r for r in h.host.requests if r["model"] == "m"]
    assert len(managed) == 4
    bound = {"num_predict": mmc.MANAGER_ANSWER_TOKENS, "num_ctx": 4096}
    assert all(r["options"] == bound for r in managed), managed[0]
    (to_b, *_) = [r for r in h.host.requests if r["model"] == "b"]
    assert to_b["temperature"] == 0.3 and "top_k" not in to_b and "options" not in to_b
    assert to_b["stream_options"] == {"include_usage": True}


# -- the context it is fitted to -------------------------------------------------------------


def test_an_ollama_model_without_num_ctx_is_fitted_to_ollamas_default_and_asks_for_it():
    budget = mmc.ContextBudget(8192, ollama_tokens=4096)
    assert budget.limit(profile("ollama")) == 4096 and budget.num_ctx(profile("ollama")) == 4096
    # Its own num_ctx wins, and is what it asks for.
    assert budget.limit(profile("ollama", 2048)) == 2048
    assert budget.num_ctx(profile("ollama", 32768)) == 32768
    # Other models: CONTEXT_TOKENS, and never a num_ctx.
    assert budget.limit(profile("openai")) == 8192 and budget.num_ctx(profile("openai")) == 0
    assert budget.num_ctx(profile("openai", 2048)) == 0


def test_with_the_ollama_valve_at_zero_ollama_decides():
    budget = mmc.ContextBudget(8192, ollama_tokens=0)
    assert budget.limit(profile("ollama")) == 8192 and budget.num_ctx(profile("ollama")) == 0
    assert budget.num_ctx(profile("ollama", 2048)) == 2048  # its own setting is still sent


def test_ollamas_prompt_count_only_makes_the_estimate_more_careful():
    """Ollama leaves out tokens it reused from its cache: a small count must not let the pipe
    send more; a large one (dense text) makes it send less."""
    ollama, other = profile("ollama"), profile("openai")
    budget = mmc.ContextBudget(8192, ollama_tokens=4096)
    budget.calibrate(ollama, chars=12_000, prompt_tokens=300)  # 40 chars a "token": cached
    budget.calibrate(other, chars=12_000, prompt_tokens=300)
    assert budget.chars_per_token(ollama) == mmc.DEFAULT_CHARS_PER_TOKEN
    assert budget.chars_per_token(other) == 8.0
    budget.calibrate(ollama, chars=12_000, prompt_tokens=6_000)  # 2 chars a token
    assert budget.chars_per_token(ollama) == 1.8


async def test_a_long_chat_is_fitted_to_ollamas_context_with_the_left_out_line():
    h = harness(a="ollama")
    h.host.chat_configs["chat-1"] = config("a", "b")
    long = " ".join(f"te{i % 10}" for i in range(1500))  # 6,000 characters
    history = []
    for i in range(4):
        history += [
            {"role": "user", "content": f"Question {i}: {long}"},
            {"role": "assistant", "content": f"### 🔴 A\n\nAnswer {i}: {long}"},
        ]

    await h.run("And now?", history=history)

    to_a, to_b = [r for r in h.host.requests if r["stream"]]
    room = (4096 - 400 - 16) * mmc.DEFAULT_CHARS_PER_TOKEN
    assert mmc.message_chars(to_a["messages"]) <= room < mmc.message_chars(to_b["messages"])
    assert re.search(r"earlier turns? of this conversation left out", json.dumps(to_a["messages"]))
    assert to_a["options"]["num_ctx"] == 4096 and "options" not in to_b


async def test_a_participants_own_sampling_reaches_ollama_in_options():
    h = harness(a="ollama")
    cfg = config("a", "b")
    cfg["participants"][0].update(temperature=1.4, top_p=0.35)
    h.host.chat_configs["chat-1"] = cfg

    await h.run(user_valves=user_valves(h))

    to_a, to_b = [r for r in h.host.requests if r["stream"]]
    assert {k: to_a["options"][k] for k in SAMPLING} == {
        "temperature": 1.4,
        "top_p": 0.35,
        "top_k": 17,
    }
    assert "temperature" not in to_a and to_b["temperature"] == 0.3


async def test_a_council_round_counts_every_answer_in_the_usage_table():
    """Council turns are generated at once on forks of the streamer; one ledger holds them."""
    h = harness(a="ollama")
    h.pipe.valves.SHOW_USAGE = True
    h.host.chat_configs["chat-1"] = config("a", "b", rounds=2, selection="council")

    result = await h.run()

    rows = re.findall(r"^\| (\w+)<br>[^|]* \| (\d+) \|", result, re.MULTILINE)
    assert rows == [("A", "2"), ("B", "2")]
