"""The pipe with Ollama-typed participants, through Open WebUI 0.12.4's own Ollama path.

Open WebUI (the `ollama_owui` fixture) has two connections, as an admin sets them: the
OpenAI-style scripted backend and a scripted Ollama server (`OLLAMA_BASE_URLS`). For a model
owned by `ollama` the host rewrites each request for `/api/chat`
(`convert_payload_openai_to_ollama`) and turns the NDJSON answer back into OpenAI chunks.
These tests check what the Ollama server received (sampling, `num_predict`, `stop`, `num_ctx` in
`options`, where Ollama reads them) and what the chat shows and keeps.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import time

import pytest_asyncio

import multi_model_conversation as mmc
from tests.backend import ToolCallScript, prompt_tokens
from tests.integration.conftest import FUNCTION_ID, PIPE_MODEL, ROOT
from tests.integration.owui import Owui, run_chat, start_chat
from tests.integration.test_pipe_live import PROBE_TOOL, details_tags, speakers, text_of
from tests.ollama_backend import DEFAULT_CONTEXT_LENGTH
from tests.test_usage import ledger_rows

A, B, C, MANAGER = "llama-a:latest", "llama-b:latest", "llama-c:latest", "llama-manager:latest"
SAMPLING = {"Temperature": 0.3, "Top_p": 0.55, "Top_k": 17}
# What a model reads from `options` and ignores at the top level of an /api/chat request.
OPTION_KEYS = {"temperature", "top_p", "top_k", "num_predict", "stop", "num_ctx", "max_tokens"}


@pytest_asyncio.fixture
async def sock(ollama_owui: Owui):
    """The admin's tab on the Ollama-connected Open WebUI."""
    client = await ollama_owui.connect()
    yield client
    await client.disconnect()


@pytest_asyncio.fixture
async def pipe(ollama_owui: Owui) -> str:
    """The pipe from this checkout, installed on the Ollama-connected Open WebUI, with the
    admin's sampling user valves set to values no default has."""
    await ollama_owui.install_function(ROOT / "multi_model_conversation.py", FUNCTION_ID)
    await ollama_owui.set_user_valves(FUNCTION_ID, SAMPLING)
    return PIPE_MODEL


def setup(*participants: tuple[str, str], rounds: int = 1, **extra) -> dict:
    """The dialog's answer for (model, alias) pairs."""
    return {
        "rounds": rounds,
        "use_manager": False,
        "manager_model": "",
        "participants": [
            {"model": m, "alias": alias, "system_message": f"Persona {alias}"}
            for m, alias in participants
        ],
        **extra,
    }


def assert_ollama_form(request, num_predict: int = 400) -> None:
    """Sampling, bounds and context where Ollama reads them; nothing it would ignore on top."""
    options = request.options
    assert options["temperature"] == 0.3 and options["top_p"] == 0.55, options
    assert options["top_k"] == 17, options
    assert options["num_predict"] == num_predict, options
    assert options["stop"] and all(s.startswith("\n") for s in options["stop"]), options
    assert options["num_ctx"] == request.num_ctx, options
    assert not OPTION_KEYS & set(request.body), sorted(request.body)


async def test_a_conversation_sends_what_the_user_set_in_options(ollama_owui, ollama, sock, pipe):
    sock.answer("execute", setup((A, "Ada"), (B, "Bo"), rounds=2))

    result = await run_chat(sock, None, pipe, "Discuss tea.")

    assert speakers(result.saved) == ["Ada", "Bo", "Ada", "Bo"]
    assert result.saved == result.delivered
    requests = ollama.requests
    assert [r.model for r in requests] == [A, B, A, B]
    for request in requests:
        assert request.stream and request.completed and request.finish_reason == "stop"
        assert request.reply and request.reply in result.saved
        assert_ollama_form(request)
        assert request.truncated == 0
    assert requests[0].options["stop"][0] == '\nBo said: "'
    assert requests[1].options["stop"][0] == '\nAda said: "'
    # Ollama's messages: the system prompt first, the other's turn as reported speech.
    second_a = requests[2].messages
    assert second_a[0]["role"] == "system" and "Persona Ada" in second_a[0]["content"]
    assert [m["role"] for m in second_a[1:]] == ["user", "assistant", "user"]
    assert second_a[2]["content"] == requests[0].reply
    assert f'Bo said: "{requests[1].reply}"' in second_a[3]["content"]
    # Open WebUI listed the models from Ollama's own endpoints.
    assert ("GET", "/api/tags") in ollama.backend.calls


async def test_thinking_becomes_a_closed_reasoning_block(ollama_owui, ollama, sock, pipe):
    ollama.set_script(A, reasoning_tokens=8, delay=0.01)
    sock.answer("execute", setup((A, "Ada"), (B, "Bo")))

    result = await run_chat(sock, None, pipe, "Think first.")

    saved = result.saved
    assert speakers(saved) == ["Ada", "Bo"] and saved == result.delivered
    (block,) = re.findall(r'<details type="reasoning"[^>]*>.*?</details>', saved, re.DOTALL)
    assert 'done="true"' in block and "think1-llama-a" in block and "think8-llama-a" in block
    assert saved.index(block) < saved.index(ollama.requests[0].reply) < saved.index("### 🔵 Bo")
    assert "think" not in re.sub(r"<details.*?</details>", "", saved, flags=re.DOTALL)
    # Bo is not shown Ada's thinking.
    assert "think" not in json.dumps(ollama.requests_for(B)[0].messages)


async def test_a_tool_call_in_ollamas_shape_runs_and_its_result_goes_back(
    ollama_owui, ollama, sock, pipe
):
    await ollama_owui.create_tool("mmc_probe", PROBE_TOOL)
    await ollama_owui.set_model_params(A, params={"function_calling": "native"})
    ollama.set_script(A, tool_call=ToolCallScript("lookup_secret", '{"word": "tea"}'))
    sock.answer("execute", setup((A, "Ada"), (B, "Bo")))

    result = await run_chat(sock, None, pipe, "Use the tool.", tool_ids=["mmc_probe"])

    saved = result.saved
    assert speakers(saved) == ["Ada", "Bo"] and saved == result.delivered
    (tag,) = details_tags(saved, "tool_calls")
    attrs = dict(re.findall(r'(\w+)="([^"]*)"', tag))
    assert 'done="true"' in tag and json.loads(html.unescape(attrs["arguments"])) == {"word": "tea"}
    assert "SECRET-tea-7319" in json.loads(html.unescape(attrs["result"]))
    first, follow_up = ollama.requests_for(A)
    assert [t["function"]["name"] for t in first.tools or []] == ["lookup_secret"]
    assert first.tool_call_sent
    # What went back to Ollama: the call with object arguments, then the tool's answer.
    (call,) = [m for m in follow_up.messages if m.get("tool_calls")]
    assert call["tool_calls"][0]["function"] == {
        "name": "lookup_secret",
        "arguments": {"word": "tea"},
    }
    (answer,) = [m for m in follow_up.messages if m["role"] == "tool"]
    assert "SECRET-tea-7319" in answer["content"]
    assert_ollama_form(follow_up)
    assert saved.index(tag) < saved.index(follow_up.reply) < saved.index("### 🔵 Bo")


async def test_stop_ends_the_ollama_stream_and_the_run(ollama_owui, ollama, sock, pipe):
    ollama.set_script(A, tokens=400, delay=0.02)
    sock.answer("execute", setup((A, "Ada"), (B, "Bo"), rounds=2))
    run = await start_chat(sock, None, pipe, "Talk a lot.")
    mid = run.assistant_message_id
    await sock.wait_for(
        lambda e: e.message_id == mid and "w20 " in str((e.data or {}).get("content", "")),
        timeout=30,
        start=run.first_event_index,
    )

    stop_at = time.monotonic()
    await ollama_owui.stop(run.chat_id)
    stopped = await run.wait(30)

    assert stopped.saved == stopped.delivered
    assert speakers(stopped.saved) == ["Ada"] and "w399" not in stopped.saved
    assert stopped.saved.endswith("\n\n*⏹️ …(stopped)*"), stopped.saved[-100:]
    await asyncio.sleep(1)
    assert [r.model for r in ollama.requests] == [A]
    assert not ollama.requests[0].completed
    assert not any(r.received_at > stop_at for r in ollama.requests)


async def test_an_ollama_manager_picks_and_is_bounded(ollama_owui, ollama, sock, pipe):
    picks = iter(["Bo", "Ada", "Bo", "Ada"])
    ollama.set_script(MANAGER, manager_rule=lambda messages: next(picks))
    answer = setup((A, "Ada"), (B, "Bo"), rounds=2)
    sock.answer("execute", {**answer, "use_manager": True, "manager_model": MANAGER})

    result = await run_chat(sock, None, pipe, "Who starts?")

    assert speakers(result.saved) == ["Bo", "Ada", "Bo", "Ada"]
    managed = ollama.requests_for(MANAGER)
    assert len(managed) == 4 and not any(r.stream for r in managed)
    # A name is a few tokens: the manager's bound, in options, with the same num_ctx.
    bound = {"num_predict": mmc.MANAGER_ANSWER_TOKENS, "num_ctx": DEFAULT_CONTEXT_LENGTH}
    assert all(r.options == bound and r.tools is None for r in managed), managed[0].options
    assert "Choose exactly one of: Ada, Bo" in text_of(managed[0].messages[-1]["content"])
    assert [r.model for r in ollama.requests if r.model != MANAGER] == [B, A, B, A]


async def test_a_participants_own_token_limit_arrives_as_num_predict(
    ollama_owui, ollama, sock, pipe
):
    ollama.set_script(A, tokens=50)
    answer = setup((A, "Ada"), (B, "Bo"))
    answer["participants"][0]["max_tokens"] = 5
    sock.answer("execute", answer)

    result = await run_chat(sock, None, pipe, "Be brief.")

    a_request, b_request = ollama.requests
    assert_ollama_form(a_request, num_predict=5)
    assert_ollama_form(b_request, num_predict=400)
    assert a_request.finish_reason == "length" and len(a_request.reply.split()) == 5
    assert "*✂️ …(cut at 5 tokens)*" in result.saved
    assert speakers(result.saved) == ["Ada", "Bo"]


async def test_a_follow_up_hands_each_ollama_model_its_own_turns(ollama_owui, ollama, sock, pipe):
    sock.answer("execute", setup((A, "Ada"), (B, "Bo")))
    first = await run_chat(sock, None, pipe, "Discuss coffee.")
    a1, b1 = (r.reply for r in ollama.requests)

    second = await run_chat(sock, None, pipe, "Go on.", chat_id=first.chat_id)

    assert second.calls == [] and speakers(second.saved) == ["Ada", "Bo"]
    a_view = ollama.requests[2]
    assert [(m["role"], m["content"]) for m in a_view.messages[1:]] == [
        ("user", "Discuss coffee."),
        ("assistant", a1),
        ("user", f'Bo said: "{b1}"\n\nAdmin said: "Go on."'),
    ]
    assert_ollama_form(a_view)


async def test_a_mixed_chat_sends_each_backend_its_own_form(
    ollama_owui, ollama, backend, sock, pipe
):
    backend.set_script("model-b", tokens=6)
    sock.answer("execute", setup((A, "Ada"), ("model-b", "Bea"), rounds=2))

    result = await run_chat(sock, None, pipe, "Mix it.")

    assert speakers(result.saved) == ["Ada", "Bea", "Ada", "Bea"]
    assert result.saved == result.delivered
    for request in ollama.requests:
        assert request.model == A
        assert_ollama_form(request)
    openai = backend.requests
    assert [r.model for r in openai] == ["model-b", "model-b"]
    for request in openai:
        body = request.body
        assert body["temperature"] == 0.3 and body["top_p"] == 0.55 and "top_k" not in body
        assert body["max_tokens"] == 400 and body["stop"][0] == '\nAda said: "'
        assert body["stream_options"] == {"include_usage": True} and "options" not in body
    # Each side reads the other's turns.
    assert f'Ada said: "{ollama.requests[0].reply}"' in text_of(openai[0].messages[-1]["content"])
    bea_said = f'Bea said: "{openai[0].reply}"'
    assert bea_said in ollama.requests[1].messages[-1]["content"]
    # The usage table holds each server's own counts: Ollama's prompt_eval_count/eval_count,
    # the OpenAI-style backend's usage (it counts words); the message's usage, the totals.
    rows = ledger_rows(result.saved)
    ada = (
        sum(r.prompt_eval_count for r in ollama.requests),
        sum(r.eval_count for r in ollama.requests),
    )
    bea = (
        sum(prompt_tokens(r.messages) for r in openai),
        sum(len(r.reply.split()) for r in openai),
    )
    assert rows["Ada"][1:4] == ["2", f"{ada[0]:,}", f"{ada[1]:,}"], rows
    assert rows["Bea"][1:4] == ["2", f"{bea[0]:,}", f"{bea[1]:,}"], rows
    prompt, completion = ada[0] + bea[0], ada[1] + bea[1]
    assert rows["Total"][1:4] == ["4", f"{prompt:,}", f"{completion:,}"]
    assert "~" not in result.saved
    usage = result.saved_message["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (prompt, completion), usage
    assert usage["total_tokens"] == prompt + completion


# 1500 tokens of 4 characters each, about what English text averages.
LONG_TURN = " ".join(f"te{i % 10}" for i in range(1500))


async def test_the_pipe_fits_an_ollama_model_to_the_context_it_will_use(
    ollama_owui, ollama, sock, pipe
):
    """Ollama silently drops the oldest part of a prompt longer than its context: the pipe
    fits every request to the context Ollama runs it with, and says what it left out."""
    await ollama_owui.set_model_params(C, params={"num_ctx": 2048})
    earlier = []
    for i in range(4):
        earlier += [
            {"role": "user", "content": f"Question {i}: {LONG_TURN}"},
            {"role": "assistant", "content": f"### 🔴 Ada\n\nAnswer {i}: {LONG_TURN}"},
        ]
    sock.answer("execute", setup((A, "Ada"), (C, "Cy")))

    result = await run_chat(sock, None, pipe, "And now?", previous_messages=earlier, timeout=90)

    assert speakers(result.saved)[-2:] == ["Ada", "Cy"]
    a_request, c_request = ollama.requests
    # Nothing was cut by Ollama: what each model read is what the pipe chose to send.
    dropped = [(r.model, r.truncated, r.prompt_eval_count, r.num_ctx) for r in ollama.requests]
    assert [d[1] for d in dropped] == [0, 0], dropped
    # Ada's model names no context: Ollama's default, sent so that it is the one used.
    assert a_request.num_ctx == DEFAULT_CONTEXT_LENGTH
    # Cy's model has num_ctx 2048 in Open WebUI: the pipe fits to it.
    assert c_request.num_ctx == 2048
    for request in (a_request, c_request):
        assert_ollama_form(request)
        assert request.prompt_eval_count + 400 <= request.num_ctx
        sent = json.dumps(request.messages)
        assert re.search(r"earlier turns? of this conversation left out", sent)
        assert "And now?" in sent
