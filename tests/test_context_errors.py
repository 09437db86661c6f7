"""Issue 29.1 (first half): the context size is read from each common server's own wording,
and never taken from the prompt's count beside it.

Every example is the server's real text, as seen in the thread named beside it (most as an
Open WebUI error reaches the pipe: `HTTP 400: <message>`).
"""

from __future__ import annotations

import json

import pytest

import multi_model_conversation as mmc
from tests.fakes import PipeHarness, Script, config

NAMED = [
    # OpenAI (chatbot-ui#820; chathub#126)
    (
        "This model's maximum context length is 8192 tokens. However, you requested 8554 "
        "tokens (7554 in the messages, 1000 in the completion). Please reduce the length of "
        "the messages or completion.",
        8192,
    ),
    (
        '{"error":{"message":"This model\'s maximum context length is 4097 tokens. However, '
        'your messages resulted in 4294 tokens. Please reduce the length of the messages.",'
        '"type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}',
        4097,
    ),
    # vLLM (vllm-project/vllm#20409; its newer wording: opsconductor-ng TOKEN_LIMIT_FIX.md)
    (
        "HTTP 400: This model's maximum context length is 16384 tokens. However, you requested "
        "122946 tokens (112946 in the messages, 10000 in the completion). Please reduce the "
        "length of the messages or completion.",
        16384,
    ),
    (
        "HTTP 400: 'max_tokens' or 'max_completion_tokens' is too large: 8000. This model's "
        "maximum context length is 4096 tokens and your request has 2778 input tokens (8000 > "
        "4096 - 2778). None",
        4096,
    ),
    # vLLM V1 engine (its processor's ValueError, quoted in many training logs)
    (
        "HTTP 400: The decoder prompt (length 5000) is longer than the maximum model length of "
        "4096. Make sure that `max_model_len` is no smaller than the number of text tokens.",
        4096,
    ),
    # Anthropic (the issue; entropy-research/Devon#88; anthropics/claude-code#14195)
    ("HTTP 400: prompt is too long: 140000 tokens > 131072 maximum", 131072),
    ("prompt is too long: 191989 tokens > 180000 maximum", 180000),
    # Anthropic, input and max_tokens together (continuedev/continue#6080)
    (
        "input length and `max_tokens` exceed context limit: 199759 + 8192 > 200000, decrease "
        "input length or `max_tokens` and try again",
        200000,
    ),
    # Google Gemini (google-gemini/gemini-cli#6678, #11507)
    (
        "HTTP 400: The input token count (1200293) exceeds the maximum number of tokens allowed "
        "(1048576).",
        1048576,
    ),
    (
        "The input token count (461428) exceeds the maximum number of tokens allowed (131072).",
        131072,
    ),
    # llama.cpp server, its JSON as describe_error reads it (ggml-org/llama.cpp#15780;
    # oobabooga/textgen#7257)
    (
        mmc.describe_error(
            {
                "code": 400,
                "message": "the request exceeds the available context size. try increasing "
                "the context size or enable context shift",
                "type": "exceed_context_size_error",
                "n_prompt_tokens": 14429,
                "n_ctx": 8192,
            }
        ),
        8192,
    ),
    # llama-cpp-python (fedora-copr/logdetective-website#193; rllm-team/rllm#55)
    ("Requested tokens (2285) exceed context window of 2048", 2048),
    # LM Studio (lmstudio-ai/lmstudio-bug-tracker#546; Gitlawb/openclaude#353;
    # lmstudio-ai/examples#29)
    (
        "Trying to keep the first 111490 tokens when context the overflows. However, the model "
        "is loaded with context length of only 32768 tokens, which is not enough. Try to load "
        "the model with a larger context length, or provide a shorter input.",
        32768,
    ),
    (
        "The number of tokens to keep from the initial prompt is greater than the context "
        "length (n_keep: 13055>= n_ctx: 4096). Try to load the model with a larger context "
        "length, or provide a shorter input.",
        4096,
    ),
    ("Error: Input length 6491 exceeds context length 1500", 1500),
    # LiteLLM wrapping OpenAI (onyx-dot-app/onyx#4728) and Anthropic (Devon#88)
    (
        "litellm.ContextWindowExceededError: litellm.BadRequestError: ContextWindowExceededError"
        ": OpenAIException - This model's maximum context length is 128000 tokens. However, "
        "your messages resulted in 172152 tokens. Please reduce the length of the messages.",
        128000,
    ),
    (
        'litellm.BadRequestError: litellm.ContextWindowExceededError: AnthropicError - {"type":'
        '"error","error":{"type":"invalid_request_error","message":"prompt is too long: 209353 '
        'tokens > 199999 maximum"}}',
        199999,
    ),
    # OpenRouter (refly-ai/refly#1177)
    (
        "400 This endpoint's maximum context length is 32768 tokens. However, you requested "
        "about 42832 tokens (42832 of text input).",
        32768,
    ),
    # SGLang (BerriAI/litellm#10793)
    ("The input (5000 tokens) is longer than the model's context length (4096 tokens).", 4096),
    # Hugging Face TGI (its validation error, HTTP 422, as Together and the HF router send it)
    (
        "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. Given: "
        "4000 `inputs` tokens and 500 `max_new_tokens`",
        4096,
    ),
]

NAMELESS = [
    # OpenAI's newer wording (the-open-agent/openagent#2344; anomalyco/opencode#6071)
    "Your input exceeds the context window of this model. Please adjust your input and try again.",
    # llama.cpp server's message alone (ggml-org/llama.cpp#17284)
    "the request exceeds the available context size, try increasing it",
    # Ollama (nano-step/nano-brain#208)
    'ollama: unexpected status 400: {"error":"the input length exceeds the context length"}',
    "HTTP 400: the input length exceeds the context length",
    # vLLM's scheduler (vllm-project/vllm#10440): the limit named is the batch's, still a size
    "HTTP 400: prompt is too long",
    "input is too long for the model",
]

NOT_CONTEXT = [
    "Rate limit: too many tokens per minute",
    "HTTP 429: You exceeded your current quota (TPM)",
    "Rate limit reached for gpt-4o on tokens per min (TPM): Limit 30000, Used 29000, "
    "Requested 8000.",
    # Anthropic's bound on the reply, not on the prompt (ChatGPTNextWeb/NextChat#4964)
    "max_tokens: 10000 > 4096, which is the maximum allowed number of output tokens for "
    "claude-3-5-sonnet-20240620",
    # DeepSeek (we0-dev/we0#56)
    "Invalid max_tokens value, the valid range of max_tokens is [1, 8192]",
    "HTTP 404: Model not found",
    "HTTP 500: Internal Server Error",
    "HTTP 401: Invalid API key",
    "Insufficient balance: top up to continue (billing)",
]


@pytest.mark.parametrize(("text", "size"), NAMED)
def test_each_servers_wording_names_its_context_size(text, size):
    assert mmc.is_context_error(text), text
    assert mmc.reported_context_limit(text) == size


@pytest.mark.parametrize("text", NAMELESS)
def test_a_context_error_naming_no_size_gives_none(text):
    assert mmc.is_context_error(text), text
    assert mmc.reported_context_limit(text) is None


@pytest.mark.parametrize("text", NOT_CONTEXT)
def test_what_must_not_change_other_errors_are_no_context_errors(text):
    assert not mmc.is_context_error(text)


def test_a_size_written_short_is_not_misread():
    assert mmc.reported_context_limit("maximum context length is 128k tokens") is None
    assert mmc.reported_context_limit("maximum context length is 1.5M tokens") is None
    assert mmc.reported_context_limit("maximum context length is 8,192 tokens") is None


def test_what_must_not_change_the_openai_wording_reads_as_before():
    assert mmc.reported_context_limit("maximum context length is 900 tokens") == 900
    assert mmc.reported_context_limit("This model's maximum context length is 8192 tokens") == 8192
    assert mmc.reported_context_limit("HTTP 400: prompt is too long") is None


def test_llama_cpp_json_keeps_its_sizes_through_the_gateway():
    body = {
        "error": {
            "code": 400,
            "message": "the request exceeds the available context size. try increasing the "
            "context size or enable context shift",
            "type": "exceed_context_size_error",
            "n_prompt_tokens": 1407,
            "n_ctx": 256,
        }
    }
    text = mmc._error_text(body)
    assert text.endswith("(n_prompt_tokens: 1407, n_ctx: 256)")
    assert mmc.reported_context_limit(text) == 256
    # An error without those fields reads as it did.
    assert mmc._error_text({"error": {"message": "Model not found"}}) == "Model not found"
    assert json.loads(json.dumps(body)) == body


async def test_an_anthropic_refusal_refits_to_the_size_it_names():
    """`prompt is too long: N tokens > M maximum` names M: the retry fits M, not 3/4 of what
    was sent (the old reading found no size in it)."""
    h = PipeHarness(models={"a": "Ana"})
    h.host.chat_configs["chat-1"] = config("a")
    too_long = mmc.ModelCallError("HTTP 400: prompt is too long: 9000 tokens > 3000 maximum")
    h.host.scripts["a"] = Script(streams=[too_long])
    history = [{"role": "user", "content": "old " * 6000}, {"role": "assistant", "content": "ok"}]

    await h.run("Hi", history=history)

    first, refit = [r for r in h.host.requests if r["stream"]]
    assert mmc.message_chars(refit["messages"]) <= 3000 * mmc.DEFAULT_CHARS_PER_TOKEN
    assert mmc.message_chars(first["messages"]) > 20_000
