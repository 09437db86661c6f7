"""
title: Multi-Model Conversation
author: Multi-Model Conversation authors
author_url: https://github.com/multi-model-conversation/multi-model-conversation
description: Several models talk with each other in one chat, each under its own heading, with
    personas, an optional manager model, reasoning blocks and tools. Streams through a coalescing
    emitter so long conversations cost the server and the browser a bounded amount per second.
version: 1.0.0
license: MIT
required_open_webui_version: 0.10.0
requirements:
"""

from __future__ import annotations

import asyncio
import codecs
import html
import inspect
import json
import logging
import random
import re
import time
import unicodedata
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

log = logging.getLogger(__name__)

# ============================================================================
# Configuration: valves, the validated conversation config, and where it comes from
# ============================================================================

# The same marks, in the same order, as "Multi Model Conversations v2", so its transcripts
# split back into turns and a participant keeps its colour after an upgrade.
COLOUR_MARKS = ("🔴", "🔵", "🟢", "🟡", "🟣", "🟠", "🟤", "⚫", "⚪")
# Each mark's colour as CSS, so the setup dialog shows a participant in its heading's colour.
MARK_COLOURS = (
    "#e53935",
    "#1e88e5",
    "#43a047",
    "#f9a825",
    "#8e24aa",
    "#fb8c00",
    "#795548",
    "#424242",
    "#9e9e9e",
)
MAX_PARTICIPANTS = 5
# How the next speaker is chosen; "council": everyone answers each round at once, unseen.
SELECTIONS = ("round_robin", "manager", "random", "mention", "council")
MODERATORS = ("", "between_rounds")  # when the user is asked for words of their own
MAX_ALIAS_CHARS = 64
# A persona or a closing task: longer ones could crowd the conversation out of a model's context.
MAX_PERSONA_CHARS = 8000
CONFIG_META_KEY = "multi_model_config"  # chat.meta key; v2 used the same one
RECONFIGURE_COMMAND = "/reconfigure"
# The user valves' select inputs: Open WebUI shows a field whose JSON schema has an `enum` as a
# <select> of its values. "" is each one's "not set".
# Built from what the setup accepts, so a select never offers a value the setup refuses.
ParticipantCount = Literal[tuple(range(1, MAX_PARTICIPANTS + 1))]
SelectionChoice = Literal[("", *SELECTIONS)]

DEFAULT_SHARED_INSTRUCTION = (
    "You are {alias}, one participant in a group conversation with {others}. "
    "Reply only as {alias}, in your own voice, and never start your reply with your own "
    "name or anyone else's."
)
DEFAULT_MANAGER_SYSTEM = (
    "You are a group chat manager. You decide who speaks next in a conversation between "
    "several participants. Pick the participant whose reply would move the conversation "
    "forward most, and avoid picking the same participant twice in a row."
)
DEFAULT_MANAGER_PROMPT = (
    "Conversation so far:\n{history}\n\nThe last speaker was '{last_speaker}'. Who should "
    "speak next? Choose exactly one of: {participant_list}\n\n"
    "Answer with the name only, nothing else."
)


class ConfigError(ValueError):
    """A configuration the user must fix; its message is shown in the chat as is."""


def one_line_alias(value: str) -> str:
    """An alias on one line, within MAX_ALIAS_CHARS, with a letter or digit the manager and
    @mentions can match (a ValueError says what is wrong)."""
    value = " ".join(value.split())
    if len(value) > MAX_ALIAS_CHARS:
        raise ValueError(f"the alias is longer than {MAX_ALIAS_CHARS} characters")
    if value and not normalize_name(value):
        raise ValueError(
            f"the alias '{value}' needs a letter or a digit, so it can be named"
        )
    return value


def not_a_bool(value: Any) -> Any:
    """true/false where a number goes is a mistake, not 1/0 (pydantic would take it)."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not on/off (true or false)")
    return value


# A speaker's name as the setup takes it: one line, at most MAX_ALIAS_CHARS.
Alias = Annotated[str, AfterValidator(one_line_alias)]


class ParticipantConfig(BaseModel):
    model: str
    alias: Alias = ""
    system_message: str = Field(default="", max_length=MAX_PERSONA_CHARS)
    # None: the MAX_TOKENS valve; 0: no limit. Configs saved before this field load unchanged.
    max_tokens: int | None = Field(default=None, ge=0, le=1_000_000)
    # None: the valves' sampling. Its own, so a critic can be cold and a dreamer hot.
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    # Its place among the rows the user filled in (empty ones are dropped): "Participant N".
    _row: int | None = PrivateAttr(default=None)

    @field_validator("model")
    @classmethod
    def _model_given(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("a participant has no model")
        return value

    @field_validator("max_tokens", mode="before")
    @classmethod
    def _no_bool(cls, value: Any) -> Any:
        return not_a_bool(value)


SKIP_WORD = "PASS"  # a participant's whole answer when it passes its turn
END_WORD = "END"  # the manager's answer when the conversation should end
# Answers without a pick (or errors) a run's manager may give: then the order falls back for
# the rest of the run. A manager that never names anyone costs this many requests per run.
MANAGER_FAILURES = 2
MAX_STOP_PHRASE_CHARS = 200
DEFAULT_CLOSING_PROMPT = (
    "The conversation is over. Close it: say where the participants agree and disagree, "
    "and state the conclusion."
)
VOTE_PROMPT = (
    "The discussion is over. Cast your vote on the question it was about: answer with one "
    "line `VOTE: <your choice in a few words>`, then at most one sentence of reason."
)


class ClosingConfig(BaseModel):
    """A last turn by a chosen model (default: the first participant's) with the whole chat."""

    model: str = ""
    alias: Alias = ""
    prompt: str = Field(default="", max_length=MAX_PERSONA_CHARS)

    @field_validator("model", "prompt")
    @classmethod
    def _strip(cls, value: str) -> str:
        return (value or "").strip()


class ConversationConfig(BaseModel):
    """What a conversation runs with; v2's overlay answer is a valid subset, so old ones load."""

    rounds: int = Field(ge=1)
    use_manager: bool = False  # v2's key; kept equal to selection == "manager"
    manager_model: str = ""
    participants: list[ParticipantConfig] = Field(
        min_length=1, max_length=MAX_PARTICIPANTS
    )
    selection: Literal[SELECTIONS] = "round_robin"
    pass_allowed: bool = False
    stop_phrase: str = Field(default="", max_length=MAX_STOP_PHRASE_CHARS)
    max_seconds: float = Field(default=0, ge=0, le=86_400)
    max_total_tokens: int = Field(default=0, ge=0, le=100_000_000)
    closing: ClosingConfig | Literal["vote"] | None = None
    preset: str = ""
    peer_review: bool = False  # council: each ranks the others' answers, unnamed
    moderator: Literal[MODERATORS] = ""  # "between_rounds": the user may add words

    @field_validator("manager_model")
    @classmethod
    def _strip(cls, value: str) -> str:
        return (value or "").strip()

    @field_validator("stop_phrase")
    @classmethod
    def _one_line(cls, value: str) -> str:
        return " ".join((value or "").split())

    @field_validator("rounds", "max_seconds", "max_total_tokens", mode="before")
    @classmethod
    def _no_bool(cls, value: Any) -> Any:
        return not_a_bool(value)

    @model_validator(mode="before")
    @classmethod
    def _defaults_from_v2_keys(cls, data: Any) -> Any:
        """No `selection`: v2's `use_manager` decides. Empty closing values mean none."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("preset") is None:
            data["preset"] = ""  # null: no preset
        if not data.get("selection"):
            data["selection"] = "manager" if data.get("use_manager") else "round_robin"
        closing = data.get("closing")
        if closing in ("", "none", False) or (
            isinstance(closing, dict) and _empty_row(closing)
        ):
            data["closing"] = None
        elif isinstance(closing, str) and closing != "vote":
            raise ValueError(
                'Closing turn: choose "vote" or a closing model, alias and task'
            )
        return data

    @model_validator(mode="after")
    def _use_manager_follows_selection(self) -> ConversationConfig:
        self.use_manager = self.selection == "manager"
        return self


V2_KEYS = ("rounds", "use_manager", "manager_model", "participants")
# Marks a setup whose preset is already turned into values: the dialog's answer and what is
# stored for a chat. Reading it never consults the preset again, so what the user confirmed runs.
RESOLVED_KEY = "preset_resolved"


def stored_form(config: ConversationConfig) -> dict[str, Any]:
    """What a chat remembers. v2's keys always; a setup from a preset whole and marked resolved
    (every value as confirmed); any other one with a newer key only when set, as v2 stored it.
    """
    if config.preset:
        return {**config.model_dump(), RESOLVED_KEY: True}
    fields = ConversationConfig.model_fields
    return {
        key: value
        for key, value in config.model_dump(exclude_none=True).items()
        if key in V2_KEYS or value != fields[key].default
    }


def preset_name(value: Any) -> str:
    """A preset as typed ("Review panel", "review-panel") in its key's spelling; "" for none."""
    return str(value or "").strip().lower().replace(" ", "_").replace("-", "_")


def apply_preset(raw: dict) -> dict:
    """Turn a config's preset into values, once: the preset gives every key the config leaves out
    (`closing: null` is "no closing", not left out), the empty fields of a closing turn it names,
    and the empty aliases and personas of its rows. What the config gives always wins.
    """
    name = preset_name(raw.get("preset"))
    if not name:
        return raw
    preset = PRESETS.get(name)
    if preset is None:
        raise ConfigError(
            f"Unknown preset '{raw.get('preset')}'. Presets: {', '.join(PRESETS)}."
        )
    given = {k: v for k, v in raw.items() if v is not None or k == "closing"}
    merged: dict[str, Any] = {**preset["config"], **given, "preset": name}
    closing, hint = merged.get("closing"), preset["config"].get("closing")
    if isinstance(closing, dict) and isinstance(hint, dict):
        merged["closing"] = _filled(closing, hint, ("model", "alias", "prompt"))
    rows = merged.get("participants")
    if isinstance(rows, list):
        hints = preset["participants"]
        merged["participants"] = [
            (
                _filled(row, hints[i], ("alias", "system_message"))
                if isinstance(row, dict) and i < len(hints)
                else row
            )
            for i, row in enumerate(rows)
        ]
    return merged


def _filled(given: dict, hint: dict, keys: tuple[str, ...]) -> dict:
    """`given` with each of `keys` it leaves empty taken from `hint`."""
    return {
        **given,
        **{
            k: hint[k]
            for k in keys
            if k in hint and not str(given.get(k) or "").strip()
        },
    }


def parse_config(raw: Any, max_rounds: int) -> ConversationConfig:
    """Validate a config from any source (dict or JSON text) into one clear ConfigError."""
    try:
        return _parse_config(raw, max_rounds)
    except RecursionError as exc:  # JSON nested a thousand levels deep
        raise ConfigError("The configuration is nested too deeply to read.") from exc


def _parse_config(raw: Any, max_rounds: int) -> ConversationConfig:
    if isinstance(raw, str | bytes):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"The configuration is not valid JSON ({exc.msg})."
            ) from exc
    if not isinstance(raw, dict):
        raise ConfigError(
            "The configuration must be an object with participants and rounds."
        )
    # The position of each row kept, to name it as the user sees it
    rows: list[int] = []
    if isinstance(raw.get("participants"), list):
        # The overlay and v2 leave empty rows for unused participant slots.
        given = raw["participants"]
        rows = [i for i, p in enumerate(given) if not _empty_row(p)]
        raw = {**raw, "participants": [given[i] for i in rows]}
    if raw.get(RESOLVED_KEY) is True:
        raw = {**raw, "preset": preset_name(raw.get("preset"))}
    else:
        raw = apply_preset(raw)
    try:
        config = ConversationConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe_validation_error(exc, rows)) from exc
    if config.rounds > max_rounds:
        raise ConfigError(
            f"Rounds must be between 1 and {max_rounds}; got {config.rounds}."
        )
    for participant, row in zip(config.participants, rows, strict=False):
        participant._row = row
    return config


def _empty_row(row: Any) -> bool:
    return isinstance(row, dict) and not any(
        str(v or "").strip() for k, v in row.items() if k != "max_tokens"
    )


# What the setup dialog calls each config key, so an error names the field the user sees.
_FIELD_NAMES = {
    "rounds": "Rounds",
    "use_manager": "Use a manager",
    "manager_model": "Manager model",
    "participants": "Participants",
    "selection": "Who speaks next",
    "pass_allowed": "PASS allowed",
    "stop_phrase": "Stop phrase",
    "max_seconds": "Time budget",
    "max_total_tokens": "Token budget",
    "closing": "Closing turn",
    "preset": "Preset",
    "model": "model",
    "alias": "alias",
    "system_message": "persona",
    "prompt": "task",
    "max_tokens": "max tokens",
    "temperature": "temperature",
    "top_p": "top-p",
    "peer_review": "Peer review",
    "moderator": "Moderator",
}


def _describe_validation_error(
    exc: ValidationError, rows: list[int] | None = None
) -> str:
    """Every problem as the dialog names it ("Participant 4: choose a model"), one sentence each.

    `rows` maps the validated participants back to the rows the user filled in (empty rows
    are dropped before validation).
    """
    problems = [
        _problem([p for p in err["loc"] if p != "ClosingConfig"], err, rows or [])
        for err in exc.errors()
        if "literal['vote']"
        not in err["loc"]  # closing's other branch: the first one says it
    ]
    unique = list(dict.fromkeys(problems))
    return "The setup is not valid. " + " ".join(
        f"{p[0].upper()}{p[1:]}." for p in unique
    )


def _problem(loc: list, err: dict, rows: list[int]) -> str:
    """One error as "<what the dialog calls it>: <what to do>"."""
    kind, ctx = err["type"], err.get("ctx") or {}
    if loc == ["participants"] and kind in ("too_short", "too_long"):
        if kind == "too_short":
            return "choose at least one participant"
        return f"at most {MAX_PARTICIPANTS} participants can take part"
    if loc == ["rounds"] and kind in ("greater_than_equal", "missing"):
        return "rounds must be at least 1"
    if loc == ["closing"] and kind == "model_type":
        return 'Closing turn: choose "vote" or a closing model, alias and task'
    if loc[:1] == ["participants"] and len(loc) > 1 and isinstance(loc[1], int):
        row = rows[loc[1]] if loc[1] < len(rows) else loc[1]
        place, field = f"Participant {row + 1}", loc[2:]
        if field == ["model"] and kind in ("missing", "value_error"):
            return f"{place}: choose a model"
        if not field and kind in ("model_type", "dict_type"):
            return f"{place}: must be an object with model, alias and persona"
    else:
        place, field = (
            _FIELD_NAMES.get(str(loc[0]), str(loc[0])) if loc else "",
            loc[1:],
        )
    if kind == "value_error":  # our validators' own words name what they check
        return f"{place}: {str(err['msg']).removeprefix('Value error, ')}".lstrip(": ")
    where = ", ".join([place, *(_FIELD_NAMES.get(str(f), str(f)) for f in field)])
    what = {
        "missing": "is missing",
        "greater_than_equal": f"must be {ctx.get('ge', 0):g} or more",
        "less_than_equal": f"must be {ctx.get('le', 0):g} or less",
        "int_parsing": "must be a whole number",
        "int_type": "must be a whole number",
        "int_from_float": "must be a whole number",
        "float_parsing": "must be a number",
        "float_type": "must be a number",
        "bool_parsing": "must be on or off (true or false)",
        "bool_type": "must be on or off (true or false)",
        "string_type": "must be text",
        "string_too_long": f"must be at most {ctx.get('max_length')} characters",
        "literal_error": f"must be {ctx.get('expected')}",
        "model_type": "must be an object",
        "dict_type": "must be an object",
        "list_type": "must be a list",
    }.get(kind) or str(err["msg"])
    return f"{where}: {what}"


def participant_count(value: Any) -> Any:
    """A count typed as text or a float ("3", 3.0) as the int the select holds, within 1-5.

    The host replaces every user valve with its default when one fails to validate, so a value
    saved by an older text field must not fail here.
    """
    try:
        count = int(float(str(value).strip()))
    except ValueError:
        return value
    return min(max(count, 1), MAX_PARTICIPANTS)


def valve_choice(value: Any, choices: Any) -> str:
    """A select valve's value in its canonical spelling ("Round Robin" -> "round_robin").

    One the select does not offer (typed before it was a select) is not set, rather than
    failing: the host would replace every user valve with its default.
    """
    key = "_".join(str(value or "").strip().lower().replace("-", " ").split())
    if key in get_args(choices):
        return key
    log.debug("user valve value %r is not one of %s; not set", value, get_args(choices))
    return ""


def manager_switch_as_selection(data: Any) -> Any:
    """Saved valves with v2's `UseGroupChatManager` on and no *Who speaks next*: the manager."""
    if (
        isinstance(data, dict)
        and data.get("UseGroupChatManager")
        and not data.get("Selection")
    ):
        data = {**data, "Selection": "manager"}
    return data


def valve_rounds(valves: Any) -> int:
    """The user valves' rounds (set, or their default)."""
    return getattr(valves, "ROUNDS_PER_CONVERSATION", 1)


def _preset_sets_rounds(valves: Any) -> bool:
    """A preset chosen in the user valves gives its own rounds, unless the user set *Rounds*.

    Open WebUI stores only the valves a user set (a field left at *Default* is sent as null
    and dropped, then saved with `exclude_unset`), and builds the valves from that: so a
    value the user set is in `model_fields_set`, and the default 3 is not.
    """
    preset = PRESETS.get(preset_name(getattr(valves, "Preset", "")))
    if not preset or "rounds" not in preset["config"]:
        return False
    chosen = getattr(valves, "model_fields_set", None)
    return chosen is not None and "ROUNDS_PER_CONVERSATION" not in chosen


def config_from_user_valves(valves: Any) -> dict[str, Any]:
    """Read v2's user-valve names (and the newer ones, when set) into the overlay's shape."""
    count = int(getattr(valves, "NUM_PARTICIPANTS", 0) or 0)
    selection = getattr(valves, "Selection", "") or ""
    participants = []
    for i in range(1, min(count, MAX_PARTICIPANTS) + 1):
        participants.append(
            {
                "model": getattr(valves, f"Participant{i}Model", "") or "",
                "alias": getattr(valves, f"Participant{i}Alias", "") or "",
                "system_message": getattr(valves, f"Participant{i}SystemMessage", "")
                or "",
            }
        )
    config: dict[str, Any] = {
        "use_manager": selection == "manager",  # v2's key says it, as v2 stored it
        "manager_model": getattr(valves, "ManagerModel", "") or "",
        "participants": participants,
    }
    if not _preset_sets_rounds(valves):
        config = {"rounds": valve_rounds(valves), **config}
    # Only what the user set, so a preset's values fill the rest.
    optional = {
        "selection": selection if selection != "manager" else "",
        "pass_allowed": getattr(valves, "PassAllowed", False),
        "stop_phrase": getattr(valves, "StopPhrase", ""),
        "max_seconds": getattr(valves, "MaxSeconds", 0),
        "max_total_tokens": getattr(valves, "MaxTotalTokens", 0),
        "preset": getattr(valves, "Preset", ""),
        "peer_review": getattr(valves, "PeerReview", False),
        "moderator": (
            "between_rounds" if getattr(valves, "AskBetweenRounds", False) else ""
        ),
    }
    config.update({k: v for k, v in optional.items() if v})
    if getattr(valves, "ClosingVote", False):
        config["closing"] = "vote"
    elif getattr(valves, "ClosingModel", "") or getattr(valves, "ClosingPrompt", ""):
        config["closing"] = {
            "model": getattr(valves, "ClosingModel", "") or "",
            "alias": getattr(valves, "ClosingAlias", "") or "",
            "prompt": getattr(valves, "ClosingPrompt", "") or "",
        }
    return config


@dataclass(frozen=True)
class Participant:
    """A configured participant with its unique alias and fixed colour mark."""

    index: int
    model_id: str
    alias: str
    persona: str
    mark: str
    max_tokens: int | None = None  # None: the MAX_TOKENS valve; 0: no limit
    temperature: float | None = None  # None: the valves'
    top_p: float | None = None


def make_participants(
    config: ConversationConfig, names: dict[str, str]
) -> list[Participant]:
    """Give every participant a unique alias (model name by default) and its colour mark."""
    result: list[Participant] = []
    taken: set[str] = set()
    for i, row in enumerate(config.participants):
        base = row.alias or names.get(row.model, row.model)
        alias = unique_alias(
            " ".join(base.split())[:MAX_ALIAS_CHARS] or row.model, taken
        )
        result.append(
            Participant(
                i,
                row.model,
                alias,
                row.system_message,
                mark_for(i),
                row.max_tokens,
                row.temperature,
                row.top_p,
            )
        )
    return result


def make_closer(
    config: ConversationConfig, participants: list[Participant], names: dict[str, str]
) -> Participant | None:
    """The closing turn's speaker: its model (default the first participant's), a free alias."""
    closing = config.closing
    if not isinstance(closing, ClosingConfig):
        return None
    model_id = closing.model or participants[0].model_id
    alias = unique_alias(
        closing.alias or "Closing", {normalize_name(p.alias) for p in participants}
    )
    index = len(participants)
    return Participant(index, model_id, alias, "", mark_for(index))


def unique_alias(base: str, taken: set[str]) -> str:
    """`base`, else `base 2`, `base 3`…: the first whose matching form is free; it is taken."""
    alias, n = base, 2
    while normalize_name(alias) in taken:
        alias, n = f"{base} {n}", n + 1
    taken.add(normalize_name(alias))
    return alias


def mark_for(index: int) -> str:
    return COLOUR_MARKS[index % len(COLOUR_MARKS)]


def normalize_name(text: str) -> str:
    """Case-, accent- and punctuation-insensitive form used to match names."""
    text = unicodedata.normalize("NFKD", text.casefold())
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return " ".join(re.sub(r"[^\w]+", " ", text).split())


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def duration(seconds: float) -> str:
    """ "42 s", "2 min", "2 min 5 s": how long, as the status and the usage say it."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, rest = divmod(whole, 60)
    return f"{minutes} min {rest} s" if rest else f"{minutes} min"


def fill_template(template: str, values: dict[str, str]) -> str:
    """Substitute only the named {placeholders}; other braces (JSON, code) stay as written."""
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), template)


# ============================================================================
# Stream decoding: SSE bytes -> OpenAI chunk frames -> content / reasoning / tool-call events
# ============================================================================


_LINE_RE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")


class SSEDecoder:
    """Incremental server-sent-events parser: feed() any split of the stream, get data payloads.

    Follows the WHATWG event-stream rules that matter here: lines end in CR, LF or CRLF; a
    blank line dispatches the event; `data:` lines join with LF; lines starting with `:` are
    comments; one space after the colon is dropped. Only the unfinished line is buffered, and
    bytes are decoded incrementally: a network read may end inside a multi-byte character.
    """

    def __init__(self) -> None:
        self._partial = ""
        self._data: list[str] = []
        self._pending_cr = False
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, chunk: bytes | str) -> list[str]:
        text = (
            self._utf8.decode(chunk) if isinstance(chunk, bytes | bytearray) else chunk
        )
        if not text:
            return []
        if self._pending_cr and text.startswith("\n"):
            text = text[1:]  # the LF of a CRLF split across two chunks
        self._pending_cr = text.endswith("\r")
        # Only CR and LF end lines (str.splitlines would also break at U+2028 inside JSON).
        lines = _LINE_RE.findall(self._partial + text)
        self._partial = ""
        if lines and not lines[-1].endswith(("\n", "\r")):
            self._partial = lines.pop()
        events: list[str] = []
        for line in lines:
            self._line(line.rstrip("\r\n"), events)
        return events

    def flush(self) -> list[str]:
        """End of stream: a last event without its blank line still counts."""
        events = self.feed(
            self._utf8.decode(b"", final=True)
        )  # a character cut off at the end
        if self._partial:
            self._line(self._partial, events)
            self._partial = ""
        self._line("", events)
        return events

    def _line(self, line: str, events: list[str]) -> None:
        if not line:
            if self._data:
                events.append("\n".join(self._data))
                self._data = []
            return
        if line.startswith(":"):
            return
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)


@dataclass
class StreamEvent:
    """One decoded piece of a model's reply."""

    # "content" | "reasoning" | "tool_call" | "error" | "done" | "malformed" | "finish" | "usage"
    kind: str
    text: str = ""  # for "finish": the finish reason
    index: int = 0
    call_id: str = ""
    name: str = ""
    arguments: str = ""
    count: int = 0  # for "usage": the prompt tokens the server counted


REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")


def decode_frame(payload: str) -> list[StreamEvent]:
    """Turn one SSE data payload (an OpenAI chat.completion.chunk) into events."""
    if payload.strip() == "[DONE]":
        return [StreamEvent("done")]
    if not payload.strip():
        return []  # an empty data line: a keep-alive
    try:
        frame = json.loads(payload)
    except (
        ValueError,
        RecursionError,
    ):  # not JSON, or JSON too deep or too large to read
        frame = None
    if not isinstance(frame, dict):
        log.debug("skipping a stream frame that is not a JSON object: %.80r", payload)
        return [StreamEvent("malformed")]
    if frame.get("error"):
        return [StreamEvent("error", text=describe_error(frame["error"]))]
    events: list[StreamEvent] = []
    usage = frame.get("usage")
    if isinstance(usage, dict):
        total, prompt = (
            _count_of(usage.get("total_tokens")),
            _count_of(usage.get("prompt_tokens")),
        )
        total = total or prompt + _count_of(usage.get("completion_tokens"))
        if total or prompt or "prompt_tokens" in usage:
            # index: the reply's total tokens (a token budget); count: its prompt tokens
            events.append(StreamEvent("usage", index=max(total, 0), count=prompt))
    choices = frame.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return events
    finish = choices[0].get("finish_reason")
    delta = choices[0].get("delta") or choices[0].get("message") or {}
    if not isinstance(delta, dict):
        delta = {}
    for key in REASONING_KEYS:
        value = delta.get(key)
        if isinstance(value, str) and value:
            events.append(StreamEvent("reasoning", value))
            break
    content = delta.get("content")
    if isinstance(content, str) and content:
        events.append(StreamEvent("content", content))
    calls = delta.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        if not isinstance(call, dict):
            continue
        function = (
            call.get("function") if isinstance(call.get("function"), dict) else {}
        )
        index = call.get("index")
        events.append(
            StreamEvent(
                "tool_call",
                index=(
                    index
                    if isinstance(index, int) and not isinstance(index, bool)
                    else 0
                ),
                call_id=_as_text(call.get("id")),
                name=_as_text(function.get("name")),
                arguments=_as_text(function.get("arguments")),
            )
        )
    if isinstance(finish, str) and finish:
        events.append(StreamEvent("finish", text=finish))
    return events


def _count_of(value: Any) -> int:
    """A token count from a usage object: an int (not a bool), else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _as_text(value: Any) -> str:
    """A delta field as text: some servers send arguments as an object, ids as numbers."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def describe_error(error: Any) -> str:
    if isinstance(error, dict):
        for key in ("message", "detail", "error"):
            if error.get(key):
                return describe_error(error[key]) + _sizes_of(error)
        return json.dumps(error)[:300]
    return str(error)[:300]


def _sizes_of(error: dict) -> str:
    """The token counts llama.cpp's server gives beside its message (`"n_ctx": 4096`)."""
    sizes = [
        f"{key}: {error[key]}"
        for key in ("n_prompt_tokens", "n_ctx")
        if isinstance(error.get(key), int)
    ]
    return f" ({', '.join(sizes)})" if sizes else ""


THINK_TAGS = (
    ("<think>", "</think>"),
    ("<thinking>", "</thinking>"),
    ("<reasoning>", "</reasoning>"),
    ("<reason>", "</reason>"),
    ("<thought>", "</thought>"),
    ("|begin_of_thought|", "|end_of_thought|"),
)
_LONGEST_TAG = max(len(t) for pair in THINK_TAGS for t in pair)
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class ThinkTagSplitter:
    """Splits streamed content at inline <think>-style tags, even when a tag is cut in two.

    Holds back at most one possible partial tag, so each call costs O(len(chunk)).
    """

    def __init__(self) -> None:
        self._held = ""
        self._close: str | None = None  # the close tag we wait for while inside a block

    def feed(self, text: str) -> list[tuple[str, str]]:
        text = self._held + text
        self._held = ""
        out: list[tuple[str, str]] = []
        while text:
            lower = text.translate(
                _ASCII_LOWER
            )  # same length as text, unlike str.lower()
            if self._close is None:
                hit = min(
                    ((lower.find(o), o, c) for o, c in THINK_TAGS if o in lower),
                    default=None,
                )
                if hit is None:
                    keep = _partial_tag_suffix(lower, [o for o, _ in THINK_TAGS])
                    self._emit(out, "content", text[: len(text) - keep])
                    self._held = text[len(text) - keep :]
                    return out
                pos, opening, closing = hit
                self._emit(out, "content", text[:pos])
                self._close = closing
                text = text[pos + len(opening) :]
            else:
                pos = lower.find(self._close)
                if pos < 0:
                    keep = _partial_tag_suffix(lower, [self._close])
                    self._emit(out, "reasoning", text[: len(text) - keep])
                    self._held = text[len(text) - keep :]
                    return out
                self._emit(out, "reasoning", text[:pos])
                out.append(("reasoning_end", ""))
                text = text[pos + len(self._close) :]
                self._close = None
        return out

    def flush(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        self._emit(out, "content" if self._close is None else "reasoning", self._held)
        self._held = ""
        return out

    @staticmethod
    def _emit(out: list[tuple[str, str]], kind: str, text: str) -> None:
        if text:
            out.append((kind, text))


def _partial_tag_suffix(lower: str, tags: list[str]) -> int:
    """Length of the longest end of `lower` that could be the start of one of `tags`.

    Every tag starts with '<' or '|', so only ends starting there are candidates.
    """
    tail = lower[-(_LONGEST_TAG - 1) :]
    start = 0
    while True:
        angle, bar = tail.find("<", start), tail.find("|", start)
        pos = min(p for p in (angle, bar, len(tail)) if p >= 0)
        if pos == len(tail):
            return 0
        end = tail[pos:]
        if any(tag.startswith(end) for tag in tags):
            return len(end)
        start = pos + 1


@dataclass
class ToolCall:
    """A tool call assembled from streamed deltas (accumulated by index)."""

    index: int
    call_id: str = ""
    name: str = ""
    arguments: str = ""

    def as_message_part(self) -> dict[str, Any]:
        return {
            "id": self.call_id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments or "{}"},
        }


class ToolCallAccumulator:
    """Joins tool-call deltas by their index, the way OpenAI-compatible servers split them."""

    def __init__(self) -> None:
        self._calls: dict[int, ToolCall] = {}

    def add(self, event: StreamEvent) -> None:
        call = self._calls.setdefault(event.index, ToolCall(event.index))
        if event.call_id:
            call.call_id = event.call_id
        if event.name:
            call.name = call.name + event.name if call.name != event.name else call.name
        call.arguments += event.arguments

    def calls(self) -> list[ToolCall]:
        result = [self._calls[i] for i in sorted(self._calls)]
        taken = {call.call_id for call in result if call.call_id}
        n = 0
        for call in result:
            while not call.call_id:
                candidate = f"call_{n}"
                n += 1
                if candidate not in taken:
                    call.call_id = candidate
                    taken.add(candidate)
        return result


# ============================================================================
# Transcript: committed parts plus one live tail, rendered on demand
# ============================================================================


def attr(value: Any) -> str:
    """Escape a value for a double-quoted HTML attribute (JSON-encoded when not a string)."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return html.escape(text, quote=True)


# Open WebUI shows inline HTML in markdown as text and does not decode entities, so names
# and messages are escaped for markdown, with backslashes. `[` and `(` stay bare: `\[` and
# `\(` open KaTeX maths there; escaping `]` and `)` is enough to stop a link.
_MD_SPECIAL = re.compile(r"([\\`*_{}\])<>#+!|~&$:])")
_MD_ESCAPED = re.compile(r"\\([\\`*_{}\])<>#+!|~&$:])")


def md_text(text: str) -> str:
    """Text that markdown renders literally: no emphasis, link, maths, heading or tag."""
    return _MD_SPECIAL.sub(r"\\\1", text)


def md_unescape(text: str) -> str:
    return _MD_ESCAPED.sub(r"\1", text)


# A model's line that starts like our heading or notice would split or vanish from history, so
# one zero-width space goes after its `### ` or `*`: it renders the same, history takes it out.
MODERATOR_MARK = "🗣️"  # the user's words added between rounds (a user turn in history)
_MARKS = "|".join(re.escape(m) for m in (*COLOUR_MARKS, MODERATOR_MARK))
# What our notice lines start with, after their `*`: a warning, a tool notice, a cut reply,
# a pass, the end of the conversation, a vote's tally.
_NOTICE_MARKS = "⚠️|🛠️|✂️|⏭️|🏁|🗳️|⏹️"
_BEFORE_MARK = rf"(?=\u200b*(?:{_MARKS}))"
_BEFORE_NOTICE_MARK = rf"(?=\u200b*(?:{_NOTICE_MARKS}))"
_LOOKALIKE_RE = re.compile(
    rf"^(?:### {_BEFORE_MARK}|\*{_BEFORE_NOTICE_MARK})", re.MULTILINE
)
_MARKED_LOOKALIKE_RE = re.compile(
    rf"^(?:### \u200b{_BEFORE_MARK}|\*\u200b{_BEFORE_NOTICE_MARK})", re.MULTILINE
)


def mark_lookalikes(text: str) -> str:
    """A model's text with its heading- and notice-like line starts made inert."""
    return _LOOKALIKE_RE.sub(lambda m: m.group(0) + "\u200b", text)


def unmark_lookalikes(text: str) -> str:
    return _MARKED_LOOKALIKE_RE.sub(lambda m: m.group(0)[:-1], text)


# Follow the alias in the heading of a vote's or a peer review's turn, so neither reads as a
# turn of the conversation; the history reads the turn as the participant's own.
VOTE_LABEL = " · 🗳️ vote"
REVIEW_LABEL = " · 🏅 review"
# The label each kind of turn carries in its heading (a conversation turn, the closing: none).
TURN_LABELS = {"vote": VOTE_LABEL, "review": REVIEW_LABEL}


def heading(
    participant: Participant, first: bool, model: str = "", label: str = ""
) -> str:
    """`### <mark> <alias>`, the alias escaped so it shows exactly as typed, never as markup;
    then `label` (a vote's), and with `model`, the model behind it in small type (history
    reads the alias alone)."""
    prefix = "" if first else "\n\n"
    behind = f" <sub>{html.escape(model)}</sub>" if model else ""
    return f"{prefix}### {participant.mark} {md_text(participant.alias)}{label}{behind}\n\n"


def moderator_heading(user_name: str, first: bool) -> str:
    """The user's words added between rounds, under a heading of their own."""
    prefix = "" if first else "\n\n"
    return f"{prefix}### {MODERATOR_MARK} {md_text(user_name)}\n\n"


_DETAILS_CLOSE = "</details"
_DETAILS_CLOSE_RE = re.compile(r"</(details)", re.IGNORECASE)


def quote_lines(text: str, at_line_start: bool) -> str:
    """Prefix each line with '> ' so reasoning renders as a quote inside its block.

    A literal `</details` in any case is escaped so it cannot close the block early; the
    Transcript holds back a possible start of one at a chunk's end (`details_close_start`).
    """
    body = _DETAILS_CLOSE_RE.sub(r"&lt;/\1", text).replace("\n", "\n> ")
    return ("> " + body) if at_line_start else body


def details_close_start(text: str) -> int:
    """Length of the longest end of `text` that could begin a `</details` (any case)."""
    tail = text[-(len(_DETAILS_CLOSE) - 1) :].lower()
    for start in range(len(tail)):
        if _DETAILS_CLOSE.startswith(tail[start:]):
            return len(tail) - start
    return 0


def reasoning_block(body: str, done: bool, seconds: int) -> str:
    if not done:
        return f'<details type="reasoning" done="false">\n<summary>Thinking…</summary>\n{body}\n</details>\n'
    summary = (
        "Thought for less than a second"
        if seconds < 1
        else f"Thought for {seconds} seconds"
    )
    return (
        f'<details type="reasoning" done="true" duration="{seconds}">\n'
        f"<summary>{summary}</summary>\n{body}\n</details>\n"
    )


def manager_block(answer: str) -> str:
    """A collapsed block holding the manager's answer: why this speaker was chosen."""
    body = quote_lines(answer.strip(), at_line_start=True)
    return f'<details type="manager" done="true">\n<summary>Why this speaker</summary>\n{body}\n</details>\n'


# A guard's cut keeps the text it held back, in a collapsed block of this type: the user can
# open it, history (`BLOCK_RE`) and so the other participants never see it.
FOLD_TYPE = "cut"
_DETAILS_TAG_RE = re.compile(r"<(/?details)", re.IGNORECASE)


def fold_block(summary: str, text: str, reason: str) -> str:
    """`text` a guard cut, folded under `summary` (the cut's mark).

    Open WebUI ends the block at the first `</details>` and counts `<details` as nested, so the
    text's own tags are escaped (it decodes entities before rendering the inside as markdown);
    the one-line summary shows as plain text, so only a `<` that could end it is replaced.
    """
    body = _DETAILS_TAG_RE.sub(r"&lt;\1", mark_lookalikes(text.strip()))
    title = " ".join(summary.split()).replace("<", "\uff1c")
    return (
        f'<details type="{FOLD_TYPE}" reason="{attr(reason)}">\n'
        f"<summary>{title}</summary>\n{body}\n</details>\n"
    )


_FOLD_RE = re.compile(rf'<details type="{FOLD_TYPE}".*?</details>', re.DOTALL)


def folds_in(text: str) -> list[str]:
    """The fold blocks in `text` (their text cannot hold a `</details`)."""
    return _FOLD_RE.findall(text)


def tool_block(
    call: ToolCall, result: str | None, files: list | None, embeds: list | None
) -> str:
    head = (
        f'<details type="tool_calls" done="{"false" if result is None else "true"}" '
        f'id="{attr(call.call_id)}" name="{attr(call.name)}" arguments="{attr(call.arguments)}"'
    )
    if result is None:
        return f"{head}>\n<summary>Executing...</summary>\n</details>\n"
    return (
        f'{head} result="{attr(json.dumps(result, ensure_ascii=False))}" '
        f'files="{attr(files) if files else ""}" embeds="{attr(embeds) if embeds else ""}">\n'
        f"<summary>Tool Executed</summary>\n</details>\n"
    )


class Transcript:
    """The whole assistant message: committed text plus one live tail (content, reasoning or tools).

    Appending a chunk is O(len(chunk)); render() joins once per frame, not once per chunk.
    """

    def __init__(
        self, clock: Callable[[], float], prefix: str = "", continues: bool = False
    ) -> None:
        self._clock = clock
        self._prefix_chars = len(
            prefix
        )  # a message this one continues (Continue Response)
        self._continues = continues  # a lane: its text goes after text already shown
        self._lane: Transcript | None = (
            None  # a turn generated aside, shown live at the end
        )
        self._committed: list[str] = [prefix] if prefix else []
        self._committed_text: str | None = None
        self._live_content: list[str] = []
        self._reasoning: list[str] | None = None
        self._reasoning_started = 0.0
        self._reasoning_at_line_start = True
        self._reasoning_held = (
            ""  # a possible `</details` cut at a chunk's end, until it ends
        )
        self._running: list[ToolCall] = []  # the batch's calls still executing
        self._running_tools: str = (
            ""  # their "Executing..." blocks, rendered once per change
        )

    # -- writing ---------------------------------------------------------------------------
    def start_turn(
        self, participant: Participant, model: str = "", label: str = ""
    ) -> None:
        self.close_live()
        self._commit(heading(participant, not self._has_text(), model, label))

    def add_user_words(self, user_name: str, text: str) -> None:
        """The user's words between rounds: a heading of their own, then the text as typed."""
        self.close_live()
        self._commit(
            moderator_heading(user_name, not self._has_text()) + md_text(text) + "\n"
        )

    def show_lane(self, lane: Transcript | None) -> None:
        """Show `lane` live after everything (a turn generated aside); None keeps what it
        showed as committed text."""
        if self._lane is not None:
            self._lane.close_live()
            text = self._lane.render()
            if text:
                self._commit(text)
        self._lane = lane

    def add_content(self, text: str) -> None:
        if self._reasoning is not None:
            self.end_reasoning()
        self._live_content.append(text)

    def add_reasoning(self, text: str) -> None:
        if self._reasoning is None:
            self._commit_live_content()
            self._reasoning = []
            self._reasoning_started = self._clock()
            self._reasoning_at_line_start = True
        text = self._reasoning_held + text
        held = details_close_start(text)
        self._reasoning_held = text[len(text) - held :] if held else ""
        self._quote_reasoning(text[: len(text) - held])

    def _quote_reasoning(self, text: str) -> None:
        if not text or self._reasoning is None:
            return
        self._reasoning.append(quote_lines(text, self._reasoning_at_line_start))
        # quote_lines already prefixed the line after each newline; only the first needs it.
        self._reasoning_at_line_start = False

    def end_reasoning(self) -> None:
        if self._reasoning is None:
            return
        self._quote_reasoning(self._reasoning_held)  # it never became a `</details`
        self._reasoning_held = ""
        seconds = int(self._clock() - self._reasoning_started)
        body = "".join(self._reasoning)
        self._reasoning = None
        if body.strip("> \n"):
            self._commit(reasoning_block(body, done=True, seconds=seconds))

    def show_running_tools(self, calls: list[ToolCall]) -> None:
        self.close_live()
        self._set_running(list(calls))

    def finish_tool(self, call: ToolCall, block: str) -> None:
        """Commit a finished call's block in place of its "Executing..." one."""
        self._commit(block)
        self._set_running([c for c in self._running if c is not call])

    def clear_running_tools(self) -> None:
        self._set_running([])

    def _set_running(self, calls: list[ToolCall]) -> None:
        self._running = calls
        self._running_tools = "".join(tool_block(c, None, None, None) for c in calls)

    def add_block(self, block: str) -> None:
        """Commit a finished block (a manager's reason) after what is there."""
        self.close_live()
        self._commit(block)

    def checkpoint(self) -> int:
        """Where the transcript ends now; `rewind` goes back to it (a turn that passed)."""
        self.close_live()
        return len(self.render())

    def rewind(self, mark: int) -> None:
        self.close_live()
        text = self.render()[:mark]
        self._committed = [text] if text else []
        self._committed_text = None

    def add_notice(self, text: str) -> None:
        self.close_live()
        sep = "" if not self._has_text() or self.render().endswith("\n\n") else "\n\n"
        self._commit(f"{sep}{text}\n\n")

    def finish(self) -> None:
        """Close everything; no trailing whitespace (the host strips it when it saves)."""
        self.close_live()
        text = self.render()
        if text != text.rstrip():
            self._committed = [text.rstrip()]
            self._committed_text = None

    def close_live(self) -> None:
        self.end_reasoning()
        self._commit_live_content()
        if self._running_tools:
            self.clear_running_tools()

    # -- reading ---------------------------------------------------------------------------
    def added(self) -> str:
        """What this request wrote after the message it continues (all of it otherwise)."""
        return self.render()[self._prefix_chars :]

    def render(self) -> str:
        if self._committed_text is None:
            self._committed_text = "".join(self._committed)
            self._committed = [self._committed_text] if self._committed_text else []
        tail = "".join(self._live_content)
        if self._reasoning is not None:
            tail += reasoning_block("".join(self._reasoning), done=False, seconds=0)
        lane = self._lane.render() if self._lane is not None else ""
        return self._committed_text + tail + self._running_tools + lane

    def live_block_at(self) -> int | None:
        """Where the open reasoning block starts in render(): it alone changes in place."""
        if self._lane is not None:
            at = self._lane.live_block_at()
            return (
                None
                if at is None
                else len(self.render()) - len(self._lane.render()) + at
            )
        if self._reasoning is None:
            return None
        return sum(map(len, self._committed)) + sum(map(len, self._live_content))

    def _has_text(self) -> bool:
        return self._continues or bool(self._committed or self._live_content)

    def has_text(self) -> bool:
        """Anything written yet (a lane: also what it follows)."""
        return self._has_text()

    def _commit_live_content(self) -> None:
        if self._live_content:
            text = mark_lookalikes("".join(self._live_content))
            self._live_content = []
            self._commit(text if text.endswith("\n") else text + "\n")

    def _commit(self, text: str) -> None:
        self._committed.append(text)
        self._committed_text = None


# ============================================================================
# Emitter: at most one frame per interval (the new text as `chat:message:delta`); saves at turn ends, in a budget
# ============================================================================


class Clock:
    """Monotonic time and sleep; tests substitute a fake one to control time."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


EmitFn = Callable[[dict[str, Any]], Awaitable[Any]]
EventCall = Callable[
    [dict], Awaitable[Any]
]  # __event_call__: asks the user's tab, awaits it


async def within(clock: Clock, seconds: float, awaitable: Awaitable[Any]) -> Any:
    """Await with a deadline kept by `clock` (a fake one in tests); TimeoutError past it."""
    task = asyncio.ensure_future(awaitable)
    timer = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # our caller was cancelled (Stop): cancel the work too
        task.cancel()
        timer.cancel()
        raise
    timer.cancel()
    if task.done():
        return task.result()
    task.cancel()
    raise TimeoutError


# Bytes of chat a message may rewrite whatever its budget: a small chat saves every turn.
FREE_SAVE_BYTES = 64 * 1024


class SaveBudget:
    """The bytes one message's stored writes may cost: `copies` times the chat as it is now.

    Open WebUI stores a chat as one JSON document: a save (`replace`) or a status rewrites all of
    it, and the message's own row too. A write is allowed while everything written so far plus
    it stays within `copies` copies of the chat's current size (plus `free` bytes), so the total
    stays within `copies` copies of the final chat (plus `free`) however long the chat and the
    conversation; a write refused now is allowed again once the chat has grown enough
    (1/(`copies` - 1) of its size at the last write). 0: no limit.
    """

    def __init__(
        self, host_bytes: int, copies: float, free: int = FREE_SAVE_BYTES
    ) -> None:
        self.host_bytes = host_bytes  # the rest of the chat, as the host stores it
        self.copies = copies
        self.free = free
        self.spent = 0  # bytes of chat rewritten so far
        self.writes = 0

    def cost(self, message_chars: int) -> int:
        """One write: the rest of the chat, plus the message twice (chat JSON and its row)."""
        return self.host_bytes + 2 * message_chars

    def affords(self, message_chars: int, writes: int = 1) -> bool:
        """`writes` writes of this size fit (a status asks room for a save after it too)."""
        cost = self.cost(message_chars)
        allowed = self.copies * cost + self.free
        return self.copies <= 0 or self.spent + writes * cost <= allowed

    def charge(self, message_chars: int) -> None:
        self.spent += self.cost(message_chars)
        self.writes += 1


def is_progress(event: dict[str, Any]) -> bool:
    """A status that says what is happening now ("Round 2 of 3 · Ada"): the pipe posts one as
    each turn begins, so it also marks the end of the turn before it."""
    data = event.get("data") or {}
    return event.get("type") == "status" and data.get("done") is False


# The event Chat.svelte answers with autoScrollToBottom() alone: a `context_compaction` whose
# data is not a compaction's status (`handleContextCompactionStatus` returns at once). Neither
# `chat:message:delta` nor `replace` scrolls, so without it the page does not follow the text.
FOLLOW_EVENT: dict[str, Any] = {"type": "context_compaction"}

# Run by the page (an `execute` event) just before the pipe empties the tab's copy for the
# host's final text: a user who scrolled up would be thrown to the top or the bottom when the
# message collapses for that instant, so a spacer holds the page's height until the text is
# back (at most 10 s), and the place they read stays where it was. At the bottom it does
# nothing: the page follows the final text as it follows every frame.
HOLD_SCROLL_SCRIPT = """
const c = document.getElementById('messages-container');
if (c && c.scrollHeight - c.scrollTop - c.clientHeight > 40) {
  const content = c.firstElementChild || c;
  const held = c.scrollHeight;
  const spacer = document.createElement('div');
  spacer.style.cssText = `height:${held}px;min-height:${held}px;flex:none`;
  c.appendChild(spacer);
  let tries = 0;
  const check = () => {
    if (content.scrollHeight >= held - 4 || ++tries > 100) spacer.remove();
    else setTimeout(check, 100);
  };
  setTimeout(check, 100);
}
"""
# Seconds between follows while the text grows: the page is at most this much text behind.
FOLLOW_INTERVAL = 0.2


class CoalescingEmitter:
    """Sends the latest transcript, at most once a frame: leading and trailing edge.

    The token loop calls `update()`, which only marks the state dirty. One sender task emits
    at most one content event per `interval`; identical payloads are never sent twice. With
    interval 0 coalescing is off: `update()` awaits one `replace` per call (the naive way).
    Other events (status, files) go through `post()`, in order, by the same sender.

    Each token should reach the tab once, so a frame that only extends what the tab shows is a
    `chat:message:delta` with the new text (the page appends it; the host only forwards it).
    A frame that changes earlier text (a reasoning block closing, a tool block finishing) goes
    whole as `chat:message`. A save is a `replace`, which the host also writes into the chat,
    rewriting the whole chat each time, as it does for a status. Saves come at save points (a
    turn's end, which a progress status marks; `max_save_interval` into a turn) within the
    `SaveBudget` of `copies` copies of the chat. Whole copies (saves and whole frames) are at
    least `save_interval` apart, stretched so that no more than `budget` bytes of chat go per
    second, and at most `max_save_interval` apart, stored or not, so they reach the tab at a
    rate that does not grow with the message. `flush()` sends the last state (and saves it
    unless the host will). While reasoning streams, its block grows in place (`live_at()` says
    where it starts): those refreshes wait for the next whole copy.

    At most one frame and one stored write (a save or a status) are in flight: the host emits
    them to the tab before it writes the chat, so a slow database write must not hold back the
    frames that follow it.
    A save's send starts before any later frame's, so the tab applies it in order.

    After the tab's copy grows, a follow (`FOLLOW_EVENT`) asks the page to keep the newest line
    in view, at most once per `follow_interval` and once more after the last change (`_follow`).
    """

    def __init__(
        self,
        send: EmitFn | None,
        render: Callable[[], str],
        interval: float,
        clock: Clock,
        host_bytes: int = 0,
        save_interval: float = 1.0,
        budget: float = 0.0,
        max_save_interval: float = 5.0,
        live_at: Callable[[], int | None] | None = None,
        copies: float = 0.0,
        follow_interval: float = 0.0,
    ) -> None:
        self._send = send
        self._render = render
        self._live_at = live_at
        self._interval = max(0.0, interval)
        self._host_bytes = host_bytes
        self._save_interval = save_interval
        self._budget = budget
        self._max_save_interval = max(save_interval, max_save_interval)
        self._last_saved: str | None = None
        self._clock = clock
        # The first save is due one interval in (the first frame holds little but a heading).
        self._last_saved_at = clock.now()
        self._whole_at = (
            self._last_saved_at
        )  # the last whole copy sent: a save or a frame
        self._budget_until = (
            self._whole_at
        )  # whole copies so far have used the budget up to here
        self._dirty = False
        self.stored = SaveBudget(host_bytes, copies)  # what saves and statuses wrote
        self._boundary = False  # a turn ended since the last save: a save point
        self._held: dict[str, Any] | None = None  # a progress status held back
        self._store_final = True
        self._queue: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._flushing = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._saving: asyncio.Future | None = None  # the save in flight, if any
        self._shown: str | None = (
            None  # the tab's copy after our last content event; None: unknown
        )
        self._shown_live_at: int | None = None  # where that copy's growing block starts
        self._last_sent_at = float("-inf")
        self._failures = 0
        self.sent_events = 0
        self._follow_interval = follow_interval
        self._followed_at = float("-inf")
        self._unfollowed = False  # the tab's copy changed since the last follow
        self._follow_timer: asyncio.Future | None = None

    async def update(self) -> None:
        """Record that the transcript changed; never waits for the socket when coalescing."""
        if self._send is None:
            return
        if self._interval == 0:
            await self._send_content()
            return
        self._dirty = True
        self._kick()

    def post(self, event: dict[str, Any]) -> None:
        """Queue a non-content event (status, files) behind whatever is in flight.

        A progress status waits for the save budget (the host stores each one in the chat);
        a newer status replaces one still waiting. It also marks a turn boundary.
        """
        if self._send is None:
            return
        status = event.get("type") == "status"
        if status:
            self._held = None  # a newer line: one still waiting is out of date
        if is_progress(event) and self._interval:
            if self._render() != (self._last_saved or ""):
                self._boundary = True
            if not self.stored.affords(len(self._last_saved or ""), writes=2):
                self._held = event  # saves come first: a status leaves room for one
                self._kick()
                return
        if status:  # the host rewrites the chat for it too
            self.stored.charge(len(self._last_saved or ""))
        self._queue.append(event)
        self._kick()

    async def flush(self, store: bool = True) -> None:
        """Return once the latest state (and every queued event) has been sent; saved too
        unless `store` is False (the host saves the text the pipe returns: one write less).
        """
        if self._send is None:
            return
        self._store_final = store
        self._flushing.set()
        self._held = None  # a "now speaking" line is out of date at the end
        if self._task is not None and not self._task.done():
            self._wake.set()
            await asyncio.shield(self._task)
        self._task = None
        await self._drain_queue()
        await self._send_content(final=True)
        await self._follow(last=True)
        self._flushing.clear()

    async def hand_over(self) -> None:
        """Empty the tab's copy of the message (not the stored one) for the host's final delta."""
        if self._send is not None and self._last_sent_at > float("-inf"):
            self._shown = ""
            await self._deliver(
                {"type": "execute", "data": {"code": HOLD_SCROLL_SCRIPT}}
            )
            await self._deliver({"type": "chat:message", "data": {"content": ""}})

    # -- sender ----------------------------------------------------------------------------
    def _kick(self) -> None:
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            owed = self._owed_in()
            if owed is None:
                await self._wake.wait()
            elif owed > 0:
                await self._sleep_unless_woken(owed)
            self._wake.clear()
            self._write_queue()
            await self._follow()
            if not self._dirty and self._owed_in() == 0:
                await self._send_content(owed=True)  # what the tab shows, stored
            if self._dirty:
                wait = self._last_sent_at + self._interval - self._clock.now()
                if wait > 0:
                    await self._sleep_unless_flushed(wait)
                self._write_queue()
                held = self._refresh_wait()
                if held > 0:
                    await self._sleep_unless_woken(held)
                    self._wake.set()  # look again: a change, a flush, or the save is due
                    continue
                self._dirty = False
                # While a flush waits, this frame is the last one: it is the save.
                await self._send_content(final=self._flushing.is_set())
                await self._follow()
            if self._flushing.is_set() and not self._dirty:
                return  # flush() sends what is still queued

    def _refresh_wait(self) -> float:
        """Seconds to hold a frame that only grows the block the tab shows growing; else 0."""
        if (
            self._live_at is None
            or self._shown_live_at is None
            or self._flushing.is_set()
        ):
            return 0.0
        if (
            self._shown is None
        ):  # the tab missed a frame: the next one goes whole, at once
            return 0.0
        if self._live_at() != self._shown_live_at:
            return 0.0
        due = self._next_save_at() - self._clock.now()
        if due <= 0 and self._saving is not None and not self._saving.done():
            return (
                self._interval
            )  # it goes as the next save, once the one in flight is done
        return max(0.0, due)

    def _save_point(self, now: float) -> bool:
        """A turn ended since the last save, or the last save is `max_save_interval` old."""
        return self._boundary or now - self._last_saved_at >= self._max_save_interval

    def _save_due(self, now: float, payload: str) -> bool:
        return (
            now >= self._next_save_at()
            and self._save_point(now)
            and self.stored.affords(len(payload))
        )

    def _owed_in(self) -> float | None:
        """Seconds until the text on screen, not stored yet, is due for a save (the stream
        may be quiet then: a model thinking, a tool running); None if no save is owed.
        """
        shown = self._shown
        if not self._interval or shown is None or shown == self._last_saved:
            return None
        if self._flushing.is_set() or not self.stored.affords(len(shown)):
            return None  # flush() saves it; only a longer message makes room
        if self._saving is not None and not self._saving.done():
            return self._interval  # look again once the write in flight is done
        at = self._next_save_at()
        if not self._boundary:
            at = max(at, self._last_saved_at + self._max_save_interval)
        return max(0.0, at - self._clock.now())

    def _next_save_at(self) -> float:
        paced = max(self._budget_until, self._whole_at + self._save_interval)
        return min(paced, self._whole_at + self._max_save_interval)

    def _charge(self, payload: str, now: float) -> None:
        """Count one whole copy (a save, or a rewrite frame) against the byte budget."""
        self._whole_at = now
        if self._budget <= 0:
            self._budget_until = now
            return
        # The host keeps the message twice (chat JSON and message row).
        seconds = (self._host_bytes + 2 * len(payload)) / self._budget
        self._budget_until = max(self._budget_until, now) + seconds

    async def _sleep_unless_flushed(self, seconds: float) -> None:
        if self._flushing.is_set():
            return
        await self._first_of(self._clock.sleep(seconds), self._flushing.wait())

    async def _sleep_unless_woken(self, seconds: float) -> None:
        await self._first_of(
            self._clock.sleep(seconds), self._flushing.wait(), self._wake.wait()
        )

    @staticmethod
    async def _first_of(*awaitables: Awaitable[Any]) -> None:
        tasks = [asyncio.ensure_future(a) for a in awaitables]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()

    def _write_queue(self) -> None:
        """Send the queued events (statuses) behind the frames, never in front of them.

        The host stores a status too, and awaits that database write before it returns: sent
        inline, one status waiting on a busy database held back every frame behind it (a
        short conversation under load reached its tab only at the end, all at once). They go
        on the writer lane with the saves instead: one stored write at a time, in order.
        """
        if self._saving is not None and not self._saving.done():
            return
        held = self._held
        if not self._queue and held is not None and not self._flushing.is_set():
            if self.stored.affords(len(self._last_saved or ""), writes=2):
                self._held = None
                self.stored.charge(len(self._last_saved or ""))
                self._queue.append(held)
        if self._queue:
            self._saving = asyncio.ensure_future(self._deliver_queued(self._saving))

    async def _deliver_queued(self, before: asyncio.Future | None) -> None:
        if before is not None:
            await asyncio.wait([before])  # a save in flight is written first
        while self._queue:
            await self._deliver(self._queue.pop(0))
        self._lane_free()

    def _lane_free(self) -> None:
        """The stored write in flight is done: a status held behind it may go now."""
        if self._held is not None:
            self._wake.set()

    async def _drain_queue(self) -> None:
        """Every queued event sent (for a flush)."""
        while self._queue or (self._saving is not None and not self._saving.done()):
            self._write_queue()
            if self._saving is not None:
                await asyncio.wait([self._saving])

    async def _send_content(self, final: bool = False, owed: bool = False) -> None:
        saving = self._saving is not None and not self._saving.done()
        if final and saving:
            await asyncio.shield(
                self._saving
            )  # the last save lands after the one in flight
            saving = False
        payload = self._render()
        live_at = self._live_at() if self._live_at is not None else None
        now = self._clock.now()
        final = final and (self._store_final or self._interval == 0)
        if payload == self._shown and not (
            (final or owed) and payload != self._last_saved
        ):
            return
        self._last_sent_at = now
        shown, self._shown, self._shown_live_at = self._shown, payload, live_at
        save = final or owed or self._interval == 0
        if not self._flushing.is_set():
            save = save or (not saving and self._save_due(now, payload))
        appends = shown is not None and payload.startswith(shown)
        if appends and not save and now - self._whole_at >= self._max_save_interval:
            # The budget may hold saves back for long: a whole copy at least this often
            # makes a tab loaded meanwhile (from the last save) exact again.
            appends = False
        if not save and not appends and not self._flushing.is_set():
            # A rewrite: the whole message goes anyway; it is stored too at a save point.
            save = not saving and self._save_point(now)
            save = save and self.stored.affords(len(payload))
        if not save or payload == self._last_saved:
            if not appends:
                self._charge(payload, now)
            await self._frame(payload, shown if appends else None)
            return
        self._charge(payload, now)
        self.stored.charge(len(payload))
        self._boundary = False
        if final or self._interval == 0:
            await self._save(payload, now, payload != shown)
        else:
            # The host shows a save at once, then writes the chat: frames go on meanwhile. Its
            # send starts now, before any later frame's, so the tab gets them in order.
            self._saving = asyncio.ensure_future(
                self._save(payload, now, payload != shown)
            )
            await asyncio.sleep(0)

    async def _frame(self, payload: str, shown: str | None) -> None:
        """Show `payload`: only its new text when it extends `shown`, else all of it."""
        if shown is not None:
            event = {
                "type": "chat:message:delta",
                "data": {"content": payload[len(shown) :]},
            }
        else:
            event = {"type": "chat:message", "data": {"content": payload}}
        if not await self._deliver(event):
            self._shown = None  # the tab may have missed it: the next frame goes whole
            return
        self._moved()

    async def _save(self, payload: str, now: float, moves: bool = True) -> None:
        try:
            await self._store(payload, now, moves)
        finally:
            self._lane_free()

    async def _store(self, payload: str, now: float, moves: bool) -> None:
        if not await self._deliver({"type": "replace", "data": {"content": payload}}):
            # It may not have reached the tab, and frames sent meanwhile built on it: a whole
            # frame repairs the tab now, not whenever the text next changes.
            self._shown = None
            if self._interval and not self._flushing.is_set():
                self._dirty = True
                self._kick()
            return
        self._last_saved, self._last_saved_at = payload, now
        if moves:  # a save of what the tab already shows moves nothing
            self._moved()

    # -- following: the page keeps the newest line in view, as for a native answer -----------
    def _moved(self) -> None:
        """The tab's copy changed: the sender follows once the last follow is an interval old
        (at once if it is already)."""
        self._unfollowed = True
        if self._follow_timer is None and self._follow_interval > 0:
            wait = self._followed_at + self._follow_interval - self._clock.now()
            self._follow_timer = asyncio.ensure_future(self._follow_after(wait))

    async def _follow_after(self, seconds: float) -> None:
        if seconds > 0:
            await self._clock.sleep(seconds)
        self._follow_timer = None
        self._kick()  # the sender follows: one event in flight, in order

    async def _follow(self, last: bool = False) -> None:
        """Send the follow if the tab's copy changed and the interval allows (`last`: always;
        a pending trailing follow is then this one).

        Open WebUI 0.12.4's Chat.svelte scrolls on it (autoScrollToBottom, which leaves a user
        who scrolled up where they are) and changes nothing else; the host stores nothing.
        """
        if last and self._follow_timer is not None:
            self._follow_timer.cancel()
            self._follow_timer = None
        due = self._followed_at + self._follow_interval <= self._clock.now()
        if not self._unfollowed or self._follow_interval <= 0 or not (last or due):
            return
        self._unfollowed = False
        self._followed_at = self._clock.now()
        await self._deliver(dict(FOLLOW_EVENT))

    async def _deliver(self, event: dict[str, Any]) -> bool:
        try:
            await self._send(event)  # type: ignore[misc]
            self.sent_events += 1
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failures += 1
            if self._failures == 1:
                log.warning(
                    "could not deliver an event to the browser (%s); continuing", exc
                )
            else:
                log.debug("event delivery failed again: %s", exc)
            return False


# ============================================================================
# Host gateway: every call into open_webui, imported lazily, in one place
# ============================================================================


class ModelCallError(RuntimeError):
    """A participant's model call failed; the message is shown in its turn."""


class AccessCheckError(RuntimeError):
    """The host's access check itself failed (a database error, say), which is no refusal."""

    def __init__(self, model_id: str, exc: Exception) -> None:
        self.model_id = model_id
        self.detail = (str(exc).splitlines() or [""])[0][:200] or type(exc).__name__
        super().__init__(f"could not check access to '{model_id}': {self.detail}")

    def for_user(self) -> str:
        return (
            f"Could not check your access to '{self.model_id}': {self.detail}. Nothing was run. "
            "Try again; if it keeps failing, an admin finds this error in the server log."
        )


# The oldest Open WebUI the pipe runs on (the front matter says the same; README's table).
# 0.9's Stop writes the host's own (empty) output over the saved message; 0.8 and older
# read their database synchronously, which every host call here awaits.
OLDEST_OPEN_WEBUI = "0.10.0"
# From this release on the host is trusted to store a pipe's returned text as the message
# (0.12.4 does, and 0.11.4; 0.10.0 keeps only what the pipe's events stored; earlier 0.11
# releases were not checked, so the pipe saves the end itself there, one write more).
HOST_STORES_RETURNED_TEXT = (0, 12, 0)


class HostTooOldError(RuntimeError):
    """The host predates the APIs the pipe calls: one line in the chat, not a traceback."""


def _release(text: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of a version string such as '0.9.0' or '0.10.2rc1'."""
    match = re.match(r"\s*v?(\d+)\.(\d+)\.(\d+)", str(text or ""))
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def _is_refusal(exc: Exception) -> bool:
    """0.12.4 refuses with a bare Exception('Model not found'); an HTTP 401/403/404 is one too."""
    if getattr(exc, "status_code", None) in (401, 403, 404):
        return True
    return type(exc) is Exception and str(exc) == "Model not found"


class HostGateway:
    """The only code that touches open_webui. Tests replace it with a fake host."""

    def __init__(self, request: Any) -> None:
        self.request = request

    # -- the host itself ----------------------------------------------------------------------
    @staticmethod
    def require_supported_host() -> None:
        """Raise HostTooOldError on a host older than OLDEST_OPEN_WEBUI (an unknown one runs)."""
        from open_webui.env import VERSION

        running = _release(VERSION)
        if running is not None and running < _release(OLDEST_OPEN_WEBUI):
            raise HostTooOldError(
                f"Multi-Model Conversation needs Open WebUI {OLDEST_OPEN_WEBUI} or newer; "
                f"this server runs {VERSION}. Ask an admin to update Open WebUI."
            )

    @staticmethod
    def stores_returned_text() -> bool:
        """Whether the host stores the text a pipe returns as the message (0.12 does); 0.10
        and 0.11 keep what the pipe's own events stored, so the pipe saves its end itself.
        """
        from open_webui.env import VERSION

        running = _release(VERSION)
        return running is not None and running >= HOST_STORES_RETURNED_TEXT

    # -- users, models, access ---------------------------------------------------------------
    async def get_user(self, user_id: str) -> Any:
        """The request's user; the first host call of every request, so it checks the host."""
        self.require_supported_host()
        from open_webui.models.users import Users

        return await Users.get_user_by_id(user_id)

    def runtime_models(self) -> dict[str, dict]:
        """The host's runtime model list (what the model picker shows)."""
        models = getattr(
            getattr(getattr(self.request, "app", None), "state", None), "MODELS", {}
        )
        return dict(models.items()) if models else {}

    async def get_model_record(self, model_id: str) -> Any:
        from open_webui.models.models import Models

        return await Models.get_model_by_id(model_id)

    async def check_access(self, user: Any, model: dict, record: Any) -> bool:
        """Open WebUI's own rule: admins may use every model, users what they were granted."""
        if getattr(user, "role", "user") != "user":
            return True
        from open_webui.utils.models import check_model_access

        # 0.11 and later take the record read at setup; 0.10 reads it again itself.
        takes_record = "model_info" in inspect.signature(check_model_access).parameters
        try:
            await check_model_access(
                user, model, **({"model_info": record} if takes_record else {})
            )
        except (
            Exception
        ) as exc:  # the host signals a refusal by raising, and so does a fault
            if _is_refusal(exc):
                return False
            raise AccessCheckError(str(model.get("id")), exc) from exc
        return True

    # -- per-chat storage ------------------------------------------------------------------
    async def load_chat_config(self, chat_id: str) -> Any:
        from open_webui.internal.db import get_async_db_context
        from open_webui.models.chats import Chat
        from sqlalchemy import select

        async with get_async_db_context() as db:
            row = (
                await db.execute(select(Chat.meta).filter_by(id=chat_id))
            ).one_or_none()
        return ((row[0] if row else None) or {}).get(CONFIG_META_KEY)

    async def save_chat_config(self, chat_id: str, config: dict) -> None:
        """Store in chat.meta: the browser's saves of the chat JSON never touch that column."""
        from open_webui.internal.db import get_async_db_context
        from open_webui.models.chats import Chat
        from sqlalchemy import select, update

        async with get_async_db_context() as db:
            row = (
                await db.execute(select(Chat.meta).filter_by(id=chat_id))
            ).one_or_none()
            if row is None:
                return
            meta = {**(row[0] or {}), CONFIG_META_KEY: config}
            await db.execute(update(Chat).filter_by(id=chat_id).values(meta=meta))
            await db.commit()

    # -- tools -----------------------------------------------------------------------------
    async def load_tools(
        self,
        user: Any,
        model: dict,
        tool_ids: list[str],
        features: dict,
        terminal_id: str | None,
        extra_params: dict,
        builtin: bool = True,
    ) -> dict[str, dict]:
        from open_webui.utils.tools import (
            get_builtin_tools,
            get_terminal_tools,
            get_tools,
        )

        params = {**extra_params, "__model__": model}
        tools: dict[str, dict] = {}
        if tool_ids:
            tools.update(await get_tools(self.request, tool_ids, user, params))
        if terminal_id:
            found = await get_terminal_tools(self.request, terminal_id, user, params)
            tools.update(found[0] if isinstance(found, tuple) else found or {})
        if builtin:
            found = await get_builtin_tools(
                self.request, params, features=features, model=model
            )
            for name, tool in found.items():
                tools.setdefault(name, tool)
        return {
            name: tool for name, tool in tools.items() if callable(tool.get("callable"))
        }

    async def process_tool_result(
        self, name: str, result: Any, tool_type: str, metadata: dict, user: Any
    ) -> tuple[str, list, list]:
        from open_webui.utils.middleware import process_tool_result

        text, files, embeds = await process_tool_result(
            self.request, name, result, tool_type, False, metadata, user
        )
        return (
            ("" if text is None else str(text)),
            list(files or []),
            list(embeds or []),
        )

    async def task_models(self) -> tuple[str, str]:
        """The admin's task models: (TASK_MODEL_EXTERNAL, TASK_MODEL); '' where unset."""
        from open_webui.models.config import Config

        config = await Config.get_many("task.model.external", "task.model.default")
        return (
            str(config.get("task.model.external") or ""),
            str(config.get("task.model.default") or ""),
        )

    # -- completions -------------------------------------------------------------------------
    async def stream_chat(self, form: dict, user: Any) -> AsyncIterator[bytes | str]:
        """Yield the SSE body of a streamed completion; raise ModelCallError on an error reply."""
        response = await self._completion({**form, "stream": True}, user)
        iterator = getattr(response, "body_iterator", None)
        if iterator is None:
            raise ModelCallError(_error_text(response))
        try:
            async for chunk in iterator:
                yield chunk
        except (
            Exception
        ) as exc:  # the body broke midway (e.g. the backend dropped the socket)
            raise ModelCallError(
                f"the stream broke off ({str(exc) or type(exc).__name__})"
            ) from exc
        finally:
            # A reply we cut (length, time, someone else's line) closes the upstream
            # connection at once, so the model stops generating.
            close = getattr(iterator, "aclose", None)
            if close is not None:
                await close()

    async def complete(self, form: dict, user: Any) -> str:
        return (await self.complete_counted(form, user))[0]

    async def complete_counted(
        self, form: dict, user: Any
    ) -> tuple[str, tuple[int, int] | None]:
        """A plain completion's text and its (prompt, completion) tokens, if the server said."""
        response = await self._completion({**form, "stream": False}, user)
        if isinstance(response, dict) and not response.get("error"):
            choices = response.get("choices") or [{}]
            message = (choices[0] or {}).get("message") or {}
            usage = (
                response.get("usage") if isinstance(response.get("usage"), dict) else {}
            )
            prompt, completion = (_count_of(usage.get(k)) for k in _USAGE_KEYS)
            counted = (prompt, completion) if prompt or completion else None
            return str(message.get("content") or ""), counted
        raise ModelCallError(_error_text(response))

    async def _completion(self, form: dict, user: Any) -> Any:
        from open_webui.utils.chat import generate_chat_completion

        try:
            # Access was checked for every model at setup (HostGateway.check_access), so the
            # host's per-call check and the filters are skipped; our system prompt is complete.
            return await generate_chat_completion(
                self.request, form, user, bypass_filter=True, bypass_system_prompt=True
            )
        except ModelCallError:
            raise
        except Exception as exc:
            detail = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
            raise ModelCallError(
                _with_status(getattr(exc, "status_code", None), str(detail))
            ) from exc


_USAGE_KEYS = ("prompt_tokens", "completion_tokens")


def _with_status(status: Any, text: str) -> str:
    """`HTTP 500: text` for an error status, so an admin sees at once what failed."""
    return (
        f"HTTP {status}: {text}" if isinstance(status, int) and status >= 400 else text
    )


def _error_text(response: Any) -> str:
    """Best description of an error reply: JSON body, plain text, or the status code."""
    if isinstance(response, dict):
        return describe_error(response.get("error") or response)
    body = getattr(response, "body", None)
    status = getattr(response, "status_code", None)
    if isinstance(body, bytes | bytearray):
        try:
            return _with_status(status, describe_error(json.loads(body)))
        except (json.JSONDecodeError, UnicodeDecodeError):
            text = body.decode("utf-8", "replace")[:300]
            return _with_status(status, text) if text else f"HTTP {status}"
    return (
        f"unexpected reply from the model (HTTP {status})" if status else "empty reply"
    )


# ============================================================================
# Setup: each unique model resolved once per run (record, access, prompt, tools)
# ============================================================================


@dataclass
class ModelProfile:
    """Everything the turn loop needs about one model, resolved once per run."""

    model_id: str
    name: str
    model: dict
    system_prompt: str = ""
    native_tools: bool = True
    tools: dict[str, dict] = field(default_factory=dict)
    tool_specs: list[dict] = field(default_factory=list)
    user_picked_tools: bool = False
    owned_by: str = ""
    context_tokens: int = (
        0  # from the model's params (num_ctx, max_context); 0: not set
    )


@dataclass
class RequestContext:
    """What this request carries that setup and tools need (never stored on the Pipe)."""

    user: Any
    metadata: dict
    tool_ids: list[str]
    features: dict
    terminal_id: str | None
    extra_params: dict
    builtin_tools: bool = (
        False  # offer Open WebUI's built-in tools without a feature switched on
    )


async def resolve_profiles(
    gateway: HostGateway,
    ctx: RequestContext,
    runtime: dict[str, dict],
    model_ids: Iterable[str],
    with_tools: bool,
    roles: dict[str, str] | None = None,
) -> dict[str, ModelProfile]:
    """Resolve every unique model concurrently; raise ConfigError naming each refused one.

    `runtime` is the host's model list, read once per run by the caller; `roles` says where
    each model is used ("Participant 2"), as the dialog names it.
    """
    roles = roles or {}

    def named(ids: list[str]) -> str:
        return ", ".join(
            f"'{m}'" + (f" ({roles[m]})" if m in roles else "") for m in ids
        )

    unique = list(dict.fromkeys(model_ids))
    missing = [m for m in unique if m not in runtime]
    if missing:
        raise ConfigError(
            f"Unknown model: {named(missing)}. Pick models from the list."
        )
    results = await asyncio.gather(
        *(_resolve_one(gateway, ctx, runtime[m], with_tools) for m in unique)
    )
    refused: list[str] = []
    profiles: dict[str, ModelProfile] = {}
    for model_id, profile in zip(unique, results, strict=True):
        if profile is None:
            refused.append(model_id)
        else:
            profiles[model_id] = profile
    if refused:
        raise ConfigError(
            f"You do not have access to {named(refused)}. "
            "Ask an admin for access or pick another model."
        )
    return profiles


async def _resolve_one(
    gateway: HostGateway, ctx: RequestContext, model: dict, with_tools: bool
) -> ModelProfile | None:
    model_id = model["id"]
    record = await gateway.get_model_record(model_id)
    if not await gateway.check_access(ctx.user, model, record):
        return None
    params = _as_dict(getattr(record, "params", None))
    meta = _as_dict(getattr(record, "meta", None))
    info_meta = (model.get("info") or {}).get("meta") or {}
    profile = ModelProfile(
        model_id=model_id,
        name=str(model.get("name") or model_id),
        model=model,
        system_prompt=str(params.get("system") or ""),
        native_tools=(params.get("function_calling") or "native") != "legacy",
        owned_by=str(model.get("owned_by") or ""),
        context_tokens=context_size(
            params, (model.get("info") or {}).get("params") or {}
        ),
    )
    if not with_tools:
        return profile
    tool_ids = list(dict.fromkeys([*ctx.tool_ids, *(meta.get("toolIds") or [])]))
    profile.user_picked_tools = bool(tool_ids)
    if not profile.native_tools:
        return profile
    features = dict(ctx.features)
    for feature in (
        meta.get("defaultFeatureIds") or info_meta.get("defaultFeatureIds") or []
    ):
        features.setdefault(feature, True)
    # Built-in tools are dozens of definitions in every request: only when asked for, by
    # the valve or by a feature (web search, ...) switched on for the chat or the model.
    builtin = ctx.builtin_tools or any(features.values())
    if not (tool_ids or ctx.terminal_id or builtin):
        return profile
    try:
        profile.tools = await gateway.load_tools(
            ctx.user,
            model,
            tool_ids,
            features,
            ctx.terminal_id,
            ctx.extra_params,
            builtin,
        )
    except Exception as exc:
        log.warning("could not load tools for %s: %s", model_id, exc)
        profile.tools = {}
    profile.tool_specs = [
        {"type": "function", "function": tool["spec"]}
        for tool in profile.tools.values()
        if isinstance(tool.get("spec"), dict)
    ]
    return profile


def _as_dict(value: Any) -> dict:
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    dump = getattr(value, "model_dump", None)
    return dump() if callable(dump) else {}


# ============================================================================
# History: earlier assistant messages split back into speaker turns
# ============================================================================

HEADING_RE = re.compile(rf"^### ({_MARKS})\s+(.+?)[ \t]*$", re.MULTILINE)
_MODEL_BEHIND_RE = re.compile(
    r"\s*<sub>[^<]*</sub>$"
)  # a heading's model name (a valve)
# Open WebUI's block types (ours and v2's); a model's own plain <details> stays in its text.
BLOCK_RE = re.compile(
    r'<details type="(?:reasoning|tool_calls|code_interpreter|manager|usage|cut)"[^>]*>.*?</details>\n?',
    re.DOTALL | re.IGNORECASE,
)
THINK_RE = re.compile(
    r"<(think|thinking|reasoning|reason|thought)>.*?</\1>\s*|\|begin_of_thought\|.*?\|end_of_thought\|\s*",
    re.DOTALL | re.IGNORECASE,
)
NOTICE_PREFIX = "*⚠️ "
STOPPED_LINE = (
    "*⏹️ …(stopped)*"  # ends a turn cut by the user's Stop, like the ✂️ cut line
)
NOTICE_RE = re.compile(rf"^\*(?:{_NOTICE_MARKS}) .*\*$\n?", re.MULTILINE)


@dataclass
class Turn:
    """One utterance: a speaker's alias (None for the human user) and what they said."""

    speaker: str | None
    content: Any  # str, or the human's list of content parts (text and images)
    note: bool = False  # the pipe's own line (turns left out here), not said by anyone
    between_rounds: bool = False  # the user's words typed between rounds, not a message


def clean_turn_text(text: str) -> str:
    """What a turn said, without reasoning, tool blocks or our notices."""
    return _clean_said(BLOCK_RE.sub("", text))


def _clean_said(text: str) -> str:
    """clean_turn_text for text whose blocks are already gone."""
    text = THINK_RE.sub("", text)
    text = NOTICE_RE.sub("", text)
    return unmark_lookalikes(text).strip()


def split_turns(content: str) -> list[Turn]:
    """Split an assistant message at its `### <mark> <alias>` headings (ours and v2's).

    Blocks go first: a tool's arguments may hold a line that looks like a heading.
    """
    turns: list[Turn] = []
    content = BLOCK_RE.sub("", content)
    matches = list(HEADING_RE.finditer(content))
    lead = _clean_said(content[: matches[0].start()] if matches else content)
    if lead:
        turns.append(Turn("", lead))  # an unattributed reply (another model, before us)
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(content)
        text = _clean_said(content[match.end() : end])
        if text and match.group(1) == MODERATOR_MARK:
            turns.append(Turn(None, md_unescape(text), between_rounds=True))
        elif text:
            alias = md_unescape(
                _without_label(_MODEL_BEHIND_RE.sub("", match.group(2)))
            )
            turns.append(Turn(alias, text))
    return turns


def _without_label(name: str) -> str:
    """A heading's alias without the label of its kind of turn (a vote's, a review's)."""
    for label in TURN_LABELS.values():
        name = name.removesuffix(label)
    return name


def history_turns(messages: list[dict]) -> list[Turn]:
    """The chat so far as turns: human messages as they are, assistant ones split by speaker."""
    turns: list[Turn] = []
    for message in messages:
        role, content = message.get("role"), message.get("content")
        if role == "user":
            turns.append(Turn(None, content if content is not None else ""))
        elif role == "assistant" and isinstance(content, str):
            turns.extend(split_turns(content))
    return turns


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", "")) for part in content if isinstance(part, dict)
        ).strip()
    return str(content or "")


def _as_parts(content: Any) -> list[dict]:
    return (
        content
        if isinstance(content, list)
        else [{"type": "text", "text": str(content)}]
    )


def speaker_label(name: str, text: str) -> str:
    """How another speaker's turn reads to a participant: as reported speech, which small
    models copy far less than `Name: text` lines (bench/labels.py: 0 lines in 12 replies,
    against 10 lines in 6 of 12 replies for `Name: text`)."""
    return f'{name} said: "{text}"'


def _labelled(name: str, content: Any) -> Any:
    if isinstance(content, list):
        return [{"type": "text", "text": f"{name} said:"}, *content]
    return speaker_label(name, content)


def _merge(a: Any, b: Any) -> Any:
    if isinstance(a, str) and isinstance(b, str):
        return f"{a}\n\n{b}"
    return [*_as_parts(a), *_as_parts(b)]


def messages_for(alias: str, turns: list[Turn], user_name: str) -> list[dict]:
    """A participant's view: its own turns as assistant, everyone else's as labelled user turns.

    Consecutive same-role messages are merged so roles alternate, and it always ends on a user
    message so the model answers rather than continues its own text. A note (turns left out
    to fit the model's context) stands as it is, where the gap is.
    """
    own = normalize_name(alias)
    out: list[dict] = []
    for turn in turns:
        if turn.note:
            role, content = "user", turn.content
        elif turn.speaker is None:
            role, content = "user", turn.content
            if out and out[-1]["role"] == "user":
                content = _labelled(user_name, content)
        elif normalize_name(turn.speaker) == own:
            role, content = "assistant", _text_of(turn.content)
        else:
            role = "user"
            content = speaker_label(turn.speaker or "Someone", _text_of(turn.content))
        if out and out[-1]["role"] == role:
            out[-1]["content"] = _merge(out[-1]["content"], content)
        else:
            out.append({"role": role, "content": content})
    if not out or out[-1]["role"] != "user":
        out.append(
            {"role": "user", "content": f"(Continue the conversation as {alias}.)"}
        )
    return out


def history_digest(turns: list[Turn], user_name: str, limit: int) -> str:
    """The conversation as `name: text` lines for the manager, the newest `limit` characters."""
    lines = [
        f"{user_name if t.speaker is None else (t.speaker or 'Earlier reply')}: {_text_of(t.content)}"
        for t in turns
    ]
    text = "\n".join(lines)
    return text if len(text) <= limit else "…" + text[-limit:]


# ============================================================================
# Context: each request fitted into its model's context window
# ============================================================================

DEFAULT_CHARS_PER_TOKEN = (
    3.0  # on the safe side for prose; calibrated by the server's usage
)
MESSAGE_OVERHEAD_CHARS = 16  # role and separators of one message
TURN_OVERHEAD_CHARS = 40  # a turn's `Name said: "…"` label and separators
_CONTEXT_ERROR_RE = re.compile(
    r"context[ _-]?(?:length|window|size|limit)|maximum context|too many tokens|"
    r"(?:prompt|input)\b[^.]{0,30}\bis too long|n_ctx|maximum model length|"
    r"maximum number of tokens allowed|exceeds? (?:the )?(?:model'?s? )?(?:maximum )?context|"
    r"inputs`? tokens \+ `?max_new_tokens",
    re.IGNORECASE,
)
# Rate limits and quotas also speak of "too many tokens": waiting helps them, shortening does not.
_NOT_CONTEXT_RE = re.compile(
    r"rate[ _-]?limit|per (?:minute|second|hour|day)|quota|\b[TR]PM\b|billing|insufficient",
    re.IGNORECASE,
)
# The context size as each common server names it, never the prompt's own count beside it.
# tests/test_context_errors.py holds each server's real wording, with where it was seen.
_CONTEXT_LIMIT_RES = tuple(
    re.compile(pattern, re.IGNORECASE)
    for pattern in (
        # OpenAI, vLLM, DeepSeek, OpenRouter, LiteLLM (which wraps them): "This model's
        # maximum context length is 8192 tokens. However, you requested 8554 tokens"
        r"maximum context length is (\d+)",
        # Anthropic: "prompt is too long: 209353 tokens > 199999 maximum"
        r"too long: \d+ tokens > (\d+) maximum",
        # Anthropic: "input length and `max_tokens` exceed context limit: 199759 + 8192 > 200000"
        r"context limit: \d+ \+ \d+ > (\d+)",
        # Google: "The input token count (1054016) exceeds the maximum number of tokens
        # allowed (1048576)."
        r"maximum number of tokens allowed \((\d+)\)",
        # llama.cpp server (its JSON's field, kept by describe_error), LM Studio's
        # "(n_keep: 13055>= n_ctx: 4096)"
        r"\bn_ctx\b\W{0,3}(?:[:=]\s*)(\d+)",
        # LM Studio: "the model is loaded with context length of only 32768 tokens"
        r"context length of only (\d+)",
        # vLLM V1: "The decoder prompt (length 5000) is longer than the maximum model length
        # of 4096."
        r"maximum model length of (\d+)",
        # SGLang: "The input (5000 tokens) is longer than the model's context length (4096
        # tokens)."
        r"model's context length \((\d+) tokens\)",
        # TGI: "`inputs` tokens + `max_new_tokens` must be <= 4096."
        r"max_new_tokens`? must be <= (\d+)",
        # llama-cpp-python: "Requested tokens (2285) exceed context window of 2048"; and any
        # other "context length 1500" / "context size: 4096" with the size right after it
        r"context[ _-]?(?:length|window|size)(?: is| of)?\s*[:=]?\s*(\d{3,8})\b",
    )
)
CONTEXT_PARAM_KEYS = (
    "num_ctx",
    "max_context",
    "context_length",
    "n_ctx",
    "max_context_length",
)
# A limit guessed from a failure (no size named) never goes below this, nor below the largest
# prompt that succeeded: one odd error must not starve every later chat with that model.
CONTEXT_FLOOR_TOKENS = 1024
UNNAMED_REFIT_SHRINK = (
    0.75  # a refit after an error naming no size: this share of what was sent
)
CUT_MARK = "\n[…]\n"
MIN_CUT_CHARS = (
    1000  # a part is not cut shorter while older turns can be left out instead
)
MIN_KEPT_CHARS = 400  # the least a request keeps of the topic and of the latest message


def is_context_error(text: str | None) -> bool:
    """An error that says the prompt does not fit the model (a plain retry cannot help)."""
    text = text or ""
    return bool(_CONTEXT_ERROR_RE.search(text)) and not _NOT_CONTEXT_RE.search(text)


def reported_context_limit(text: str) -> int | None:
    """The context size an error names ("maximum context length is 8192 tokens"), if any;
    None when it names none (a count of the prompt alone is no size), or names it in a form
    not read here ("128k", "1.5M": never taken for 128 or 1)."""
    for pattern in _CONTEXT_LIMIT_RES:
        if match := pattern.search(text or ""):
            if re.match(r"[.,]?\d|\s?[kKmM]\b", text[match.end(1) :]):
                return None
            return int(match.group(1))
    return None


def context_size(*param_sets: dict) -> int:
    """A model's context size from its Open WebUI params (top level or custom_params); 0: unset."""
    for params in param_sets:
        for source in (params, params.get("custom_params") or {}):
            for key in CONTEXT_PARAM_KEYS:
                try:
                    value = int(source.get(key) or 0)
                except (TypeError, ValueError):
                    continue
                if value > 0:
                    return value
    return 0


def omitted_line(count: int) -> str:
    return f"({_count(count, 'earlier turn')} of this conversation left out.)"


def message_chars(messages: list[dict]) -> int:
    return sum(
        len(_text_of(m.get("content"))) + MESSAGE_OVERHEAD_CHARS for m in messages
    )


class ModelFacts:
    """What is known about models across every run of every user: owned by the `Pipe`, handed
    to each run's `ContextBudget`, which alone writes it.

    Who may write what: `proven` only from a server's own count (the prompt tokens of a
    request that worked); `sizes` only from a context size a server named in an error
    (`ContextBudget.learn`). An error naming none writes nothing: it shrinks its own request.
    Nothing a run guesses from its own request sizes is written here.
    """

    def __init__(
        self, sizes: dict[str, int] | None = None, proven: dict[str, int] | None = None
    ) -> None:
        self.sizes: dict[str, int] = dict(sizes or {})  # model id -> context tokens
        self.proven: dict[str, int] = dict(
            proven or {}
        )  # model id -> largest prompt that worked


class ContextBudget:
    """One run's view of each model's context size and its characters per token.

    The size is one a server named in an error, else the model's own setting, else the
    default (for an Ollama model, Ollama's default: it does not refuse a longer prompt, it
    drops the oldest part). What holds for every run lives in the shared `ModelFacts`; the
    characters per token are this run's.
    """

    def __init__(
        self,
        default_tokens: int,
        facts: ModelFacts | None = None,
        ollama_tokens: int = 0,
    ) -> None:
        self._default = default_tokens
        self._ollama = ollama_tokens
        self.facts = ModelFacts() if facts is None else facts
        self._learned = self.facts.sizes
        self._proven = self.facts.proven
        self._ratio: dict[str, float] = {}

    def limit(self, profile: ModelProfile) -> int:
        ollama = self._ollama if profile.owned_by == "ollama" else 0
        return (
            self._learned.get(profile.model_id)
            or profile.context_tokens
            or ollama
            or self._default
        )

    def num_ctx(self, profile: ModelProfile) -> int:
        """The context to ask an Ollama model for: the size its requests are fitted to, so
        Ollama cuts nothing off. 0 (Ollama decides) for other models, or when neither the
        model nor OLLAMA_CONTEXT_TOKENS names one."""
        if profile.owned_by != "ollama":
            return 0
        if not (
            profile.context_tokens or self._ollama or profile.model_id in self._learned
        ):
            return 0
        return self.limit(profile)

    def known(self, profile: ModelProfile) -> bool:
        """The size is the model's own setting or one a server named, not the assumed one."""
        return bool(self._learned.get(profile.model_id) or profile.context_tokens)

    def chars_per_token(self, profile: ModelProfile) -> float:
        return self._ratio.get(profile.model_id, DEFAULT_CHARS_PER_TOKEN)

    def calibrate(self, profile: ModelProfile, chars: int, prompt_tokens: int) -> None:
        """The server counted `prompt_tokens` for `chars` characters: use its ratio (a bit low),
        and remember that a prompt this large works.

        Ollama's count may leave out the tokens it reused from its cache or cut off, so it
        can only make the estimate more careful, never less.
        """
        if prompt_tokens > 0 and chars > 0:
            ratio = min(8.0, max(1.0, 0.9 * chars / prompt_tokens))
            if profile.owned_by == "ollama":
                ratio = min(ratio, self.chars_per_token(profile))
            self._ratio[profile.model_id] = ratio
            proven = self._proven.get(profile.model_id, 0)
            self._proven[profile.model_id] = max(proven, prompt_tokens)
            log.debug("%s: %.2f characters per token", profile.model_id, ratio)

    def learn(self, profile: ModelProfile, error: str) -> bool:
        """After a context-length error: the size it names, kept for every run (a server's
        statement about that model). False: it names none, and nothing is learnt, so one
        chat's failure never shrinks what another chat sends (see `retry_chars`)."""
        named = reported_context_limit(error)
        if named is None:
            return False
        current = self.limit(profile)
        self._learned[profile.model_id] = min(named, current) if current else named
        return True

    def retry_chars(
        self, profile: ModelProfile, sent_chars: int, besides: int = 0
    ) -> int:
        """The characters one retry of this request may take after an error naming no size:
        three quarters of what was sent, and no more than the largest prompt the model took
        before (never under CONTEXT_FLOOR_TOKENS), less `besides` (tool specs)."""
        room = int(sent_chars * UNNAMED_REFIT_SHRINK)
        proven = self._proven.get(profile.model_id, 0)
        if proven:
            tokens = max(proven, CONTEXT_FLOOR_TOKENS)
            room = min(room, int(tokens * self.chars_per_token(profile)) - besides)
        return max(0, room)

    def room_chars(
        self, profile: ModelProfile, reserve_tokens: int, shrink: float
    ) -> int | None:
        """Characters the messages may take, or None when the context size is unknown."""
        limit = self.limit(profile)
        if not limit:
            return None
        tokens = (
            int(limit * shrink) - reserve_tokens - 16
        )  # a little slack for the template
        return max(0, int(tokens * self.chars_per_token(profile)))


# -- one fitter for every request: leave out the oldest, cut the longest in the middle -------


def cut_middle(text: str, keep: int) -> str:
    """`text` in at most `keep` characters: its start and its end, the middle marked `[…]`."""
    if len(text) <= keep:
        return text
    room = max(0, keep - len(CUT_MARK))
    head = room - room // 2
    return text[:head] + CUT_MARK + text[len(text) - (room - head) :]


def cut_content(content: Any, keep: int) -> Any:
    """A message's content (text, or the user's parts with images) cut to `keep` characters."""
    if not isinstance(content, list):
        return cut_middle(str(content), keep)
    texts = [
        i for i, part in enumerate(content) if isinstance(part, dict) and "text" in part
    ]
    excess = len(_text_of(content)) - keep
    out = list(content)
    for i in sorted(texts, key=lambda j: -len(str(content[j]["text"]))):
        if excess <= 0:
            break
        text = str(out[i]["text"])
        kept = max(0, len(text) - excess - len(CUT_MARK))
        out[i] = {**out[i], "text": cut_middle(text, kept + len(CUT_MARK))}
        excess -= len(text) - len(out[i]["text"])
    return out


def water_level(sizes: list[int], room: int) -> int:
    """The largest level L with sum(min(size, L)) <= room: cut every part longer than L to L."""
    rest, count = room, len(sizes)
    for size in sorted(sizes):
        if size * count > rest:
            return max(0, rest // count)
        rest -= size
        count -= 1
    return max(sizes, default=0)


def plan_fit(sizes: list[int], keep: list[bool], room: int) -> list[int] | None:
    """Characters each part keeps (0: left out) so that all fit in `room`, or None.

    The oldest parts that may go are left out while fitting would cut the longest shorter than
    MIN_CUT_CHARS; then every part longer than one level is cut to it. Parts marked `keep`
    are never left out; None when even they, cut to MIN_KEPT_CHARS, do not fit.
    One pass: the level reaches `least` exactly when the parts capped at `least` fit, so
    leaving a part out updates two sums instead of computing the level again.
    """
    if (
        sum(min(s, MIN_KEPT_CHARS) for s, k in zip(sizes, keep, strict=True) if k)
        > room
    ):
        return None
    least = max(MIN_CUT_CHARS, room // 8)
    plan = list(sizes)
    total, capped = sum(sizes), sum(min(s, least) for s in sizes)
    droppable = (i for i, size in enumerate(sizes) if size and not keep[i])
    while total > room:
        i = next(droppable, None) if capped > room else None
        if (
            i is None
        ):  # cutting to one level keeps enough of each part, or nothing may go
            level = water_level([s for s in plan if s], room)
            return [min(s, level) for s in plan]
        total, capped, plan[i] = total - sizes[i], capped - min(sizes[i], least), 0
    return plan


@dataclass
class Fitted:
    """A request's turns fitted to its room, with what the user should be told."""

    turns: list[Turn]  # kept turns, cut ones marked, a note where others were left out
    shortened: list[
        tuple[int, int]
    ]  # (kept, of) characters of the user's messages cut short
    omitted: int = 0  # turns left out


def protected_turns(turns: list[Turn]) -> set[int]:
    """The turns a fit always keeps: the topic (the first user message), the request's own
    message (the last one the user sent, however many words between rounds followed it),
    and the user's latest words."""
    users = [i for i, t in enumerate(turns) if t.speaker is None and not t.note]
    sent = [i for i in users if not turns[i].between_rounds]
    return {users[0], users[-1], *sent[-1:]} if users else set()


def _gaps(sizes: list[int], protected: set[int]) -> int:
    """How many stretches of turns that may be left out the protected ones leave."""
    gaps, open_gap = 0, False
    for i, size in enumerate(sizes):
        if i in protected:
            open_gap = False
        elif size and not open_gap:
            gaps, open_gap = gaps + 1, True
    return gaps


def fit_turns(turns: list[Turn], room: int) -> Fitted | None:
    """The turns within `room` characters: the protected ones always stay, cut in the middle
    if they must; older turns go first, and a note stands where they were. None: not even
    the kept messages fit."""
    protected = protected_turns(turns)
    sizes = [len(_text_of(t.content)) + TURN_OVERHEAD_CHARS for t in turns]
    if sum(sizes) > room:  # room for a note in each stretch of turns that may go
        note = len(omitted_line(999)) + MESSAGE_OVERHEAD_CHARS
        room -= _gaps(sizes, protected) * note
    keep = [False] * len(turns)
    for i in protected:
        keep[i] = True
    plan = plan_fit(sizes, keep, room)
    if plan is None:
        return None
    out: list[Turn] = []
    shortened: list[tuple[int, int]] = []
    gap = omitted = 0
    for turn, size, kept in zip(turns, sizes, plan, strict=True):
        if not kept and size:
            gap += 1
            continue
        if gap:
            out.append(Turn(None, omitted_line(gap), note=True))
            omitted, gap = omitted + gap, 0
        if kept < size:
            text = len(_text_of(turn.content))
            turn = Turn(
                turn.speaker, cut_content(turn.content, kept - TURN_OVERHEAD_CHARS)
            )
            if turn.speaker is None:
                shortened.append((len(_text_of(turn.content)), text))
        out.append(turn)
    if gap:
        out.append(Turn(None, omitted_line(gap), note=True))
        omitted += gap
    return Fitted(out, shortened, omitted)


def fit_tool_results(messages: list[dict], start: int, room: int) -> list[dict]:
    """The tool results from `start` on cut in the middle, the longest first, so the request
    fits `room` characters; what comes before them is fitted already."""
    excess = message_chars(messages) - room
    tools = [
        i for i in range(start, len(messages)) if messages[i].get("role") == "tool"
    ]
    if excess <= 0 or not tools:
        return messages
    sizes = [len(_text_of(messages[i].get("content"))) for i in tools]
    level = water_level(sizes, max(0, sum(sizes) - excess))
    out = list(messages)
    for i, size in zip(tools, sizes, strict=True):
        if size > level:
            out[i] = {**out[i], "content": cut_middle(str(out[i]["content"]), level)}
    return out


# ============================================================================
# Speakers stay themselves: stop where a reply goes on as someone else
# ============================================================================
#
# A reply is read line by line. A line that starts with a name of this conversation and a
# colon (`Ben: …`, `Ben said: "…"`, `ベン：…`) is a *label line*. Most label lines are
# legitimate: a scorecard item named like a reviewer, a note by a participant called Note,
# a line of a dialogue the user asked for, a name addressed. So a label line of someone else
# is held back until the evidence decides (`SpeakerGuard._judge`), and only then shown or cut:
#
#   cut  - the pipe's own transcript format, `Ben said: "…"` (what a model sees in history);
#        - the same voice labelled twice in a row: a script going on;
#        - the line reads as speech (I, we, you, a greeting, a question: `Ben: I agree!`),
#          or the next label line of the conversation's voices does.
#   keep - a bold or italic label (`**Security:** …`), a lowercase start (`Ben: you are
#          right`: addressed), a list, quote, table, heading or code around it;
#        - a block the reply presents: after a line ending with a colon ("A scorecard:"), or
#          beside a label that is no name of this conversation (`Agent:` in a sample dialogue);
#        - a plain statement (`Note: The deposit is due on Friday.`).
#
# Full-width colons count as colons. Whatever a cut held back is kept (`held_back`), so the
# caller can fold it under the turn instead of losing it.

MAX_STOP_SEQUENCES = 4  # OpenAI's limit; most servers take more, none fewer
_REPORTING = (" said", " says", " wrote")  # `Name said:`: the pipe's transcript form
_COLONS = ":："
_EMPHASIS = "*_"
_LIST_ITEM = re.compile(r"[-+*] |\d{1,3}[.)] ")
_NEVER_A_TURN = (
    ">|#[(<"  # a quote, table, heading, link, aside or tag at the line start
)
_FENCES = ("```", "~~~")
_PRONOUN_LABELS = ("you", "me", "i", "we")
_OPENING_QUOTES = '"“«「'  # `Ben said: "…"` is how a transcript shows Ben speaking
# A label that is no name of the conversation: one to three words, the first capitalised (or
# of a script without case), then a colon: `Agent:`, `Edge cases:`, `顧客：`.
_OTHER_LABEL = re.compile(r"[^\W\d_][\w'’-]*(?: [^\W\d_][\w'’-]*){0,2}")
# Words that make a line speech rather than a statement: persons and openers of a reply.
_SPEECH_WORDS = frozenset(
    "i i'm i'd i'll i've me my mine myself we we're we'll we've we'd us our ours let's "
    "you you're you'll you've you'd your yours "
    "je j' moi nous vous tu toi yo nosotros tú usted ich wir du uns euch io noi eu nós você".split()
)
# A reply's opening words: a greeting anyhow, an interjection when a comma or a stop follows
# ("No, …" speaks; "No tests yet." states).
_GREETINGS = frozenset("hi hello hey thanks thank sounds please welcome".split())
_INTERJECTIONS = frozenset(
    "yes yeah yep no nope oh ah well okay ok alright sure right agreed exactly indeed hmm "
    "wow great absolutely sorry".split()
)
_SPEECH_MARKS = (
    *"?!？！¿¡私僕俺我你您",
    "あなた",
)  # a question, an exclamation, I, you
_WORDS = re.compile(r"[\w']+")
# A label line whose text repeats this many consecutive words of what the others said before
# recites their part (`Pro: Remote work saves hours of commuting…` in Con's reply).
RECITED_WORDS = 6


def word_runs(text: str, size: int) -> set[tuple[str, ...]]:
    """Every run of `size` consecutive words of `text` (casefolded), to spot a recital."""
    words = _WORDS.findall(text.replace("’", "'").casefold())
    return {tuple(words[i : i + size]) for i in range(len(words) - size + 1)}


def stop_sequences(
    own: str, aliases: list[str], user_name: str, closing: str = ""
) -> list[str]:
    """`Name said: "` at a line start, the pipe's own transcript format, for the speakers after
    `own` in turn order, the closing speaker and the user: the one form the guard always cuts,
    so the server may stop there too. A bare `Name:` would also cut `Note: …` or a scorecard.
    """
    if own in aliases:
        at = aliases.index(own)
        aliases = aliases[at + 1 :] + aliases[:at]
    names = [a for a in (*aliases, closing, user_name) if a != own and a.strip()]
    return [f'\n{n} said: "' for n in dict.fromkeys(names)][:MAX_STOP_SEQUENCES]


@dataclass
class Label:
    """A line's `Name:` / `Name said:` start: whose (`own`, `other`, or `unknown`: a name not
    in this conversation), how it is written and the text after its colon."""

    name: str  # as the conversation spells it (an unknown label: as written)
    who: Literal["own", "other", "unknown"]
    rest: str  # after the colon and its spaces, up to the line's end
    said: bool = False  # `Name said:`, the pipe's transcript form
    marked: bool = False  # in bold or italics: a field label, `**Security:** …`

    @property
    def addressed(self) -> bool:
        """`Ben: you are right`: a lowercase start speaks to Ben, not as Ben."""
        first = self.rest.lstrip(" \"'“«")[:1]
        return first.islower()

    def speaks(self, after: str = "") -> bool:
        """The label's text (or, when it is bare, `after`) reads as speech, not a statement."""
        text = (self.rest or after).replace("’", "'").casefold().lstrip(" \"'“«「")
        if any(w in _SPEECH_WORDS for w in _WORDS.findall(text)):
            return True
        if any(m in text for m in _SPEECH_MARKS):
            return True
        first = _WORDS.match(text)
        if first is None:
            return False
        then = text[first.end() : first.end() + 1]
        word = first.group()
        return word in _GREETINGS or (word in _INTERJECTIONS and then in ",.!…")


def read_label(line: str, names: dict[str, str], own: str) -> Label | None:
    """`line` (a whole line) read as a label line; None when it is none, or sits in a list,
    quote, table, heading, aside or indented code. `names`: casefolded → as spelled, longest
    first; `own` casefolded."""
    body = line.lstrip(" ")
    if body.startswith("\t") or len(line) - len(body) > 3 or not body.strip():
        return None
    if body[0] in _NEVER_A_TURN or _LIST_ITEM.match(body):
        return None
    inner = body.lstrip(_EMPHASIS)
    low = inner.casefold()
    for key in (*(n for n in names if low.startswith(n)), None):
        if key is not None:
            after, who, name = (
                inner[len(key) :],
                "own" if key == own else "other",
                names[key],
            )
        elif (m := _OTHER_LABEL.match(inner)) and not m.group()[0].islower():
            if m.group().casefold() in _PRONOUN_LABELS:
                return (
                    None  # `You: …` in a continued script is no list of the reply's own
                )
            after, who, name = inner[m.end() :], "unknown", m.group()
        else:
            return None
        label = _label_after(body, inner, after, name, who)
        if label is not None or key is None:
            return label
    return None


def _label_after(
    body: str, inner: str, after: str, name: str, who: str
) -> Label | None:
    """The label whose name ends where `after` begins, if a colon follows (see read_label)."""
    closing = after.lstrip(_EMPHASIS)
    marked = inner != body or closing != after  # `**Ben:**`, `**Ben**:`, `*Ben said:*`
    said = next((v for v in _REPORTING if closing.casefold().startswith(v)), "")
    tail = closing[len(said) :]
    closing = tail.lstrip(_EMPHASIS)
    if not closing or closing[0] not in _COLONS:
        return None
    rest = closing[1:]
    shown = rest.lstrip(_EMPHASIS)
    marked = marked or closing != tail or shown != rest
    if said and who == "unknown":
        return None  # `Everyone said: …` is prose
    return Label(name, who, shown.strip(), bool(said), marked)  # type: ignore[arg-type]


def _may_be_label(start: str, names: dict[str, str]) -> bool:
    """A line's start (no newline yet) may still become a label line of a conversation name."""
    body = start.lstrip(" ")
    if body.startswith("\t") or len(start) - len(body) > 3:
        return False
    inner = body.lstrip(_EMPHASIS)
    if not inner:
        return True
    if body[0] in _NEVER_A_TURN or _LIST_ITEM.match(body):
        return False
    low = inner.casefold()
    for name in names:
        if name.startswith(low):
            return True
        if low.startswith(name):
            closing = low[len(name) :].lstrip(_EMPHASIS)
            for verb in ("", *_REPORTING):
                tail = (
                    closing[len(verb) :].lstrip(_EMPHASIS)
                    if closing.startswith(verb)
                    else None
                )
                if tail is not None and (not tail or tail[0] in _COLONS):
                    return True
                if verb and verb.startswith(closing):
                    return True
    return False


class SpeakerGuard:
    """Filters a streamed reply: ends it before a line where it goes on as another speaker,
    and drops its own leading `Name:` label; see the section's comment for the evidence.

    Lines stream through as they come, except a line that starts with a conversation name's
    label: that one is held until it and the next line with text are read."""

    def __init__(
        self, own: str, others: list[str], said: dict[str, str] | None = None
    ) -> None:
        """`others`: every other voice (participants, the closing speaker, the user);
        `said`: what each of them said before, by name."""
        spelled = {n.casefold(): n for n in [*others, own] if n.strip()}
        self._names = dict(sorted(spelled.items(), key=lambda kv: -len(kv[0])))
        self._own = own.casefold()
        said = said or {}
        self._runs = set().union(  # what the others said, to spot a recital of it
            *(word_runs(t, RECITED_WORDS) for n, t in said.items() if n != own)
        )
        # Labels the conversation itself used (`Motion: …`): voices of it, not a list's own.
        self._used = {
            label.name.casefold()
            for text in said.values()
            for line in text.splitlines()
            if (label := read_label(line, {}, "")) is not None
        }
        self.stopped_by: str | None = None  # whose line ended the reply, as spelled
        self.held_back = ""  # what the guard kept out of the reply when it ended it
        self._line = ""  # the current line's start, held while it may be a label
        self._current = ""  # the current line as passed through so far
        self._passing = False  # the current line is passed through as it comes
        self._pending: list[str] = []  # a held label line, then blank lines after it
        self._label: Label | None = None  # the held line's label
        self._listed = False  # the held line was introduced or is in a list
        self._block: Literal["", "list", "script"] = ""  # the label lines around
        self._intro = False  # the last line with text ended with a colon
        self._started = False  # some text went out already
        self._fence = ""  # the open code fence, if any

    def feed(self, text: str) -> str:
        """The part of `text` that may be shown now ('' once the reply has ended)."""
        out: list[str] = []
        while text and self.stopped_by is None:
            cut = text.find("\n")
            piece, text = (text, "") if cut < 0 else (text[: cut + 1], text[cut + 1 :])
            if self._passing:
                out.append(piece)
                self._current += piece
                if cut >= 0:
                    self._passing = False
                    self._line_done(self._current)
                continue
            self._line += piece
            out.append(self._read(ended=cut >= 0))
        if self.stopped_by is not None:
            self.held_back += text
        return "".join(out)

    def flush(self) -> str:
        """End of the reply: what is still held is judged with nothing after it."""
        out = ""
        if self._line and self.stopped_by is None:
            out = self._read(ended=True)
        if self._pending and self.stopped_by is None:
            out += self._judge(None)
        return out

    def _read(self, ended: bool) -> str:
        """The current line's start: passed through, held, or (a whole line) judged."""
        line = self._line
        if not self._pending and not ended:
            if not self._fence and _may_be_label(line, self._names):
                return ""
            self._line, self._current, self._passing = "", line, True
            return line
        if not ended:
            return ""  # the line after a held label line is read whole
        self._line = ""
        out = ""
        if self._pending:
            if not line.strip():
                self._pending.append(line)
                return ""
            out = self._judge(self._label_of(line), line)
            if self.stopped_by is not None:
                return out
        return out + self._whole_line(line)

    def _label_of(self, line: str) -> Label | None:
        """The line's label, unless it is in code or is a label the conversation used."""
        label = None if self._fence else read_label(line, self._names, self._own)
        used = label is not None and label.who == "unknown"
        return None if used and label.name.casefold() in self._used else label

    def _whole_line(self, line: str) -> str:
        """A complete line no held label waits on: shown, or held as a label line."""
        label = self._label_of(line)
        if label is None or label.who == "unknown" or self._block == "script":
            self._line_done(line)
            return line
        quoted = label.rest[:1] in _OPENING_QUOTES and not label.marked
        if label.said and quoted and label.who == "other" and self._started:
            return self._stop(label, line)  # the pipe's own transcript format
        if label.marked or (label.addressed and label.who != "own"):
            if label.who == "own" and not self._started:
                self._started = True
                return label.rest + line[len(line.rstrip("\r\n")) :]
            self._line_done(line)
            return line
        listed = self._intro or self._block == "list"
        if label.said and label.who == "other" and self._started and not listed:
            return self._stop(
                label, line
            )  # `Ben said: We agree.`: a report opening a line
        self._pending, self._label, self._listed = [line], label, listed
        return ""

    def _judge(self, nxt: Label | None, line: str = "") -> str:
        """The held label line, given the next line (`line`, its label `nxt`; None: no label
        or the end). Its own label, or one opening the reply, goes unless a list follows.
        """
        held, self._pending = self._pending, []
        label, self._label = self._label, None
        assert label is not None
        first, blanks, cut = held[0], "".join(held[1:]), "".join(held) + line
        if nxt is not None and nxt.who == "unknown":
            return self._keep(first, blanks, "script")  # a script of its own: `Agent:`
        listing = nxt is not None and nxt.name != label.name and not self._speaks(nxt)
        if label.who == "own" or not self._started:
            if listing:
                return self._keep(
                    first, blanks, "list"
                )  # a list opening with this label
            self._started = self._started or bool(label.rest)
            return label.rest + first[len(first.rstrip("\r\n")) :] + blanks
        if (
            self._listed
        ):  # introduced ("A scorecard:") or in a list: only speech is a turn
            if label.speaks(line):
                return self._stop(label, cut)
            return self._keep(first, blanks, "list")
        if nxt is not None and nxt.name == label.name and not nxt.marked:
            return self._stop(label, cut)  # the same voice again: a script
        if self._speaks(label, line) or (nxt is not None and self._speaks(nxt)):
            return self._stop(label, cut)
        return self._keep(first, blanks, "list" if listing else "")

    def _speaks(self, label: Label, after: str = "") -> bool:
        """A label line of this conversation that reads as that speaker's own words: speech
        (I, you, a greeting, a question) or a run of what the others said before."""
        if label.who == "unknown" or label.addressed or label.marked:
            return False
        if label.speaks(after):
            return True
        words = _WORDS.findall((label.rest or after).replace("’", "'").casefold())
        return any(
            tuple(words[i : i + RECITED_WORDS]) in self._runs
            for i in range(len(words) - RECITED_WORDS + 1)
        )

    def _keep(
        self, first: str, blanks: str, block: Literal["", "list", "script"]
    ) -> str:
        self._line_done(first)
        self._block = block
        return first + blanks

    def _stop(self, label: Label, held: str) -> str:
        self.stopped_by, self.held_back = label.name, held
        return ""

    def _line_done(self, line: str) -> None:
        """Bookkeeping once a line is shown whole: code fences, blocks, introductions."""
        text = line.strip()
        if not text:
            return
        self._started = True
        mark = text[:3]
        if mark in _FENCES and (not self._fence or mark == self._fence):
            self._fence = "" if self._fence else mark
            self._block, self._intro = "", False
            return
        if self._fence:
            return
        if self._label_of(line) is None:
            self._block = ""  # a line of prose ends a block of label lines
        self._intro = text[-1] in _COLONS


FOLD_LINE_CHARS = 400  # how much of a line spoken as someone else is read to fold


class ReplyFilter:
    """A reply's text on its way to the transcript: think tags split off, then the speaker
    guard, then the echo guard. What a guard cuts is kept (`folded`), never shown as said.
    """

    def __init__(
        self, guard: SpeakerGuard | None = None, echo: EchoGuard | None = None
    ) -> None:
        self._splitter = ThinkTagSplitter()
        self.guard = guard
        self.echo = echo
        self._line = ""  # what the speaker guard was fed since the last line it let out
        self._open = ""  # what it let out of that line
        self._cut_by_speaker = (
            ""  # the text from the line where it stopped the reply on
        )
        self._after: list[str] = []  # what arrived after the reply had ended

    @property
    def stopped_by(self) -> str | None:
        return self.guard.stopped_by if self.guard else None

    @property
    def held_back(self) -> str:
        """The text the speaker guard kept out of the transcript when it ended the reply
        (for the caller to fold under the turn); '' when it did not end it."""
        return self.guard.held_back if self.guard else ""

    @property
    def ended(self) -> bool:
        """The reply ended early: it spoke as someone else, or began copying."""
        return self.stopped_by is not None or bool(self.echo and self.echo.echoed)

    @property
    def done(self) -> bool:
        """The reply ended, and what ended it has arrived: a line spoken as someone else is
        read to its end (at most FOLD_LINE_CHARS), so the user can read it whole."""
        if self.cut != "speaker":
            return self.ended
        line = self._cut_by_speaker + "".join(self._after)
        return "\n" in line or len(line) >= FOLD_LINE_CHARS

    @property
    def cut(self) -> str:
        """Why the reply ended early: "speaker", "echo", "loop" or "" (it did not)."""
        if self.echo is not None and self.echo.echoed:
            return self.echo.reason
        return "speaker" if self.stopped_by is not None else ""

    def folded(self) -> str:
        """Everything the guards cut, in the order it came: the user may read it, nobody
        hears it."""
        echoed = self.echo.cut_text if self.echo else ""
        return echoed + self._cut_by_speaker + "".join(self._after)

    def feed(self, text: str) -> list[tuple[str, str]]:
        return self._guarded(self._splitter.feed(text))

    def flush(self) -> list[tuple[str, str]]:
        parts = self._guarded(self._splitter.flush())
        tail = ""
        if not self.ended:
            tail = self._speaker(self.guard.flush(), "") if self.guard else ""
        if self.echo is not None:
            tail = (self.echo.feed(tail) if tail else "") + self.echo.flush()
        return [*parts, ("content", tail)] if tail else parts

    def _guarded(self, parts: list[tuple[str, str]]) -> list[tuple[str, str]]:
        if self.guard is None and self.echo is None:
            return parts
        out = []
        for kind, text in parts:
            if self.ended:
                self._after.append(text)
                continue
            if kind == "content":
                arrived = bool(text)
                text = (
                    self._speaker(self.guard.feed(text), text) if self.guard else text
                )
                text = self.echo.feed(text) if self.echo and text else text
                if self.echo and self.echo.echoed and self.stopped_by is None:
                    self.echo.feed(self._held_line())  # nothing more is shown
                if not text:
                    if arrived:  # held back for now: the reasoning before it has ended
                        out.append(("reasoning_end", ""))
                    continue
            out.append((kind, text))
        return out

    def _speaker(self, shown: str, fed: str) -> str:
        """Keeps the line the speaker guard is holding (what the echo guard must not see
        shown); at a cut, the fold is what the guard itself says it held back."""
        self._line += fed
        lines = shown.count("\n")
        if lines:
            self._line = self._line.split("\n", lines)[-1]
            self._open = shown.rsplit("\n", 1)[-1]
        else:
            self._open += shown
        if self.stopped_by is not None:
            assert self.guard is not None
            self._cut_by_speaker, self._line = self.guard.held_back, ""
        return shown

    def _held_line(self) -> str:
        """What the speaker guard holds back: the start of a line none of which went out."""
        held = "" if self._open else self._line
        self._line = ""
        return held


# ============================================================================
# Echoes: a reply that starts copying what was already said ends there
# ============================================================================

# A reply ends as an echo once it has copied this many consecutive words of its sources
# (matched without case, punctuation or markup). One long quoted sentence is about 30 words and
# a few words around a quote may match by chance, so quoting a sentence, in quotes, in a `>`
# block or plainly, never reaches it; a copied turn or a copied system prompt (the pipe's own
# rules and shared instruction are about 45 words) does.
ECHO_RUN_WORDS = 40
# A whole reply that is a passage of its sources word for word ends as an echo when it has at
# least this many words: the pipe's note "(6 earlier turns of this conversation left out.)" has
# 8, while a short agreement that happens to stand in an earlier turn ("I agree with Ben.",
# "That sounds like fun, Ana!") has 5 or fewer.
ECHO_WHOLE_WORDS = 6
_ECHO_WORD_CHARS = 100  # a longer token (a URL, a hash) is no word: it breaks a run
_ECHO_HELD_CHARS = (
    4000  # a run spread wider than this (floods of markup) is no copy of words
)
_ECHO_FENCES = (
    "```",
    "~~~",
)  # a line starting so opens or closes code, which is never matched
# Scripts written without spaces between words (Thai, Lao, Myanmar, Khmer, Chinese, Japanese,
# full-width forms): each character is a piece of its own that no run goes over, so such text
# is never held back (nor matched: its words cannot be told apart here).
_UNSPACED = (
    "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff"  # Thai, Lao, Myanmar, Khmer
    "\u3001-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"  # CJK, kana, full-width
)
_PIECE_RE = re.compile(rf"(?P<space>\s+)|(?P<unspaced>[{_UNSPACED}])|[^\s{_UNSPACED}]+")
_NOT_WORD_RE = re.compile(r"[\W_]+")


def echo_word(token: str) -> str:
    """A token as matched: case, punctuation and markdown emphasis left out ('' for markup)."""
    return _NOT_WORD_RE.sub("", token.casefold())


def echo_sources(system_prompt: str, turns: Iterable[Turn]) -> list[str]:
    """What a participant's reply must not copy at length: its system prompt, and of the turns
    it was shown (`fit_turns`' turns), the participants' and the pipe's notes. The user's own
    messages are not in it: a participant asked to edit a pasted text keeps long runs of it.
    """
    shown = [_text_of(t.content) for t in turns if t.note or t.speaker is not None]
    return [system_prompt, *shown]


class PassageIndex:
    """Every passage of the sources as a path of words (a suffix automaton, built in linear
    time), so the longest copied run ending at a reply's next word costs O(1) amortized.

    It grows at its end (`add`, `append`) at no cost to what it already holds; sources are
    kept apart by gaps (numbers, which no word equals) that no run goes over.
    """

    def __init__(self, sources: Iterable[str] = ()) -> None:
        self._next: list[dict[str | int, int]] = [{}]
        self._link = [-1]
        self._len = [0]
        self._first = [-1]  # where a state's passages first end (a word's position)
        self._last = 0
        self._gaps = 0
        self.links_followed = 0  # the matching's only loop, counted for the tests
        for text in sources:
            self.add(text)

    def add(self, text: str) -> None:
        """One more source: its words, and a gap at each character of a script without
        spaces and after it."""
        for piece in _PIECE_RE.finditer(text):
            if piece.lastgroup is None:
                if word := echo_word(piece.group()):
                    self._last = self._extend(self._last, word)
            elif piece.lastgroup == "unspaced":
                self.gap()
        self.gap()

    def gap(self) -> None:
        self._gaps += 1
        self._last = self._extend(self._last, self._gaps)

    def append(self, word: str) -> tuple[int, int]:
        """Add one word; the longest run ending with it that stands earlier too (its words) and
        how many words back its first occurrence ends (a loop's period)."""
        self._last = self._extend(self._last, word)
        link = self._link[self._last]
        return self._len[link], self._len[self._last] - 1 - self._first[link]

    def step(self, state: int, length: int, word: str) -> tuple[int, int]:
        """The state and length of the longest run of the sources that ends with `word`, given
        the run (`state`, `length`) that ended at the word before it. The index may have grown
        since (another lane was shown a new turn): a state split meanwhile is found again on
        its suffix links, where its run's length fits."""
        while state and self._len[self._link[state]] >= length:
            state = self._link[state]
        while state and word not in self._next[state]:
            state = self._link[state]
            length = self._len[state]
            self.links_followed += 1
        if word in self._next[state]:
            return self._next[state][word], length + 1
        return 0, 0

    def _extend(self, last: int, word: str | int) -> int:
        """Blumer et al.'s online construction: one word more, at most two new states."""
        cur = self._new(self._len[last] + 1, -1, {}, self._len[last])
        p = last
        while p != -1 and word not in self._next[p]:
            self._next[p][word] = cur
            p = self._link[p]
        if p == -1:
            self._link[cur] = 0
            return cur
        q = self._next[p][word]
        if self._len[p] + 1 == self._len[q]:
            self._link[cur] = q
            return cur
        clone = self._new(
            self._len[p] + 1, self._link[q], dict(self._next[q]), self._first[q]
        )
        while p != -1 and self._next[p].get(word) == q:
            self._next[p][word] = clone
            p = self._link[p]
        self._link[q] = self._link[cur] = clone
        return cur

    def _new(
        self, length: int, link: int, edges: dict[str | int, int], first: int
    ) -> int:
        self._len.append(length)
        self._link.append(link)
        self._next.append(edges)
        self._first.append(first)
        return len(self._len) - 1


# A reply that repeats its own earlier run of this many words ends there too (a paragraph or a
# line looped until the token cap), unless the run repeats what stands fewer than
# LOOP_MIN_PERIOD words before it: table cells (`| yes | yes |`), `Thank you! Thank you!`.
LOOP_MIN_PERIOD = 8
_FOLD_REASONS = {"run": "echo", "whole": "echo", "loop": "loop"}


class EchoGuard:
    """Ends a streamed reply where it has copied `run_words` consecutive words of its sources
    (earlier turns, its instructions, the pipe's notes) or of itself; no copied word is shown.

    Holds back only the words of the current run and the word being written, and lets them go
    as soon as the run breaks. Fenced code is never matched: fixing someone's code keeps most
    of it. What it cuts is kept (`cut_text`) for the transcript to fold. A `free` phrase (the
    stop phrase) is never an echo. `feed` costs what its chunk costs, however long the reply
    and the sources are.
    """

    def __init__(
        self,
        sources: Iterable[str] = (),
        run_words: int = ECHO_RUN_WORDS,
        whole_words: int = ECHO_WHOLE_WORDS,
        *,
        indexes: Iterable[PassageIndex] = (),
        free: Iterable[str] = (),
    ) -> None:
        self.indexes = [*indexes]
        sources = list(sources)
        if sources or not self.indexes:
            self.indexes.insert(0, PassageIndex(sources))
        self.index = self.indexes[0]
        self._own = PassageIndex()  # the reply itself, word by word: its loops
        self._free = {w for f in free if (w := tuple(_echo_words(f)))}
        self._run_words = run_words
        self._whole_words = whole_words
        self._held = ""  # fed and not shown yet; starts at offset `_base` of the reply
        self._base = 0
        self._end = 0  # characters fed so far
        self._run: deque[int] = deque()  # where each word of the current run starts
        self._states = [0] * len(self.indexes)  # the current run in each index
        self._lengths = [0] * len(self.indexes)
        self._copied = 0  # the longest of those runs: words copied from the sources
        self._word_at: int | None = None  # where the word being written starts
        self._line_start = True  # no word yet on this line
        self._in_code = False
        self._words = 0  # the reply's words so far (those in code too)
        # why the reply ended: "run" | "whole" | "loop" | "" (it did not)
        self.echoed = ""
        self.copied_words = 0  # the copied run's words when it ended
        self.withheld = 0  # characters fed and never shown
        self._cut: list[str] = []  # those characters

    @property
    def cut_text(self) -> str:
        """What the reply went on with after the copy began: never shown, kept to fold."""
        return "".join(self._cut)

    @property
    def reason(self) -> str:
        """The cut as the transcript marks it: "echo" (of the sources), "loop" or ""."""
        return _FOLD_REASONS.get(self.echoed, "")

    def feed(self, text: str) -> str:
        """The part of the reply that may be shown now ('' once it has ended as an echo)."""
        if self.echoed:
            self.withheld += len(text)
            self._cut.append(text)
            return ""
        self._held += text
        start = self._end
        for piece in _PIECE_RE.finditer(text):
            at, kind = start + piece.start(), piece.lastgroup
            if kind is None:  # a word, or part of one
                self._word_at = at if self._word_at is None else self._word_at
                continue
            if self._word_at is not None:
                self._end_word(self._word_at, at)
                self._word_at = None
                if self.echoed:
                    break
            if kind == "space":
                self._line_start = self._line_start or "\n" in piece.group()
            else:  # a character of a script without spaces: a word of its own, never matched
                self._words += 1
                self._line_start = False
                self._reset()
        self._end = start + len(text)
        return self._stop() if self.echoed else self._release()

    def flush(self) -> str:
        """The end of the reply: what is held goes out, unless the whole reply was a copy."""
        if self.echoed:
            return ""
        if self._word_at is not None:
            self._end_word(self._word_at, self._end)
            self._word_at = None
        self._expire(self._end)
        if not self.echoed and self._whole_words <= self._words == self._copied:
            lines = {tuple(_echo_words(line)) for line in self._held.splitlines()}
            if not lines & self._free:  # the stop phrase on a line of its own is free
                self.echoed, self.copied_words = "whole", self._words
        if self.echoed:
            return self._stop()
        shown, self._held, self._base = self._held, "", self._end
        return shown

    def _end_word(self, start: int, end: int) -> None:
        """A token is complete: the run goes on, shrinks to what still matches, or trips."""
        first, self._line_start = self._line_start, False
        if end - start > _ECHO_WORD_CHARS:
            self._words += 1
            self._reset()
            return
        token = self._held[start - self._base : end - self._base]
        fence = first and token.startswith(_ECHO_FENCES)
        self._in_code ^= fence
        if fence or self._in_code:
            self._words += 1
            self._reset()
            return
        word = echo_word(token)
        if not word:
            return  # markup between words (`>`, `-`, `**`): the run goes on over it
        self._words += 1
        self._expire(end)
        for i, index in enumerate(self.indexes):
            self._states[i], self._lengths[i] = index.step(
                self._states[i], self._lengths[i], word
            )
        self._copied = max(self._lengths)
        looped, period = self._own.append(word)
        looped = looped if period >= LOOP_MIN_PERIOD else 0
        self._run.append(start)
        while len(self._run) > max(self._copied, looped):
            self._run.popleft()
        if self._copied >= self._run_words:
            self.echoed, self.copied_words = "run", self._copied
        elif looped >= self._run_words:
            self.echoed, self.copied_words = "loop", looped

    def _release(self) -> str:
        """What is no longer held: all before the run, or before the word being written.

        A run that can no longer go on ends here rather than at the next word: the same end.
        """
        long_word = (
            self._word_at is not None and self._end - self._word_at > _ECHO_WORD_CHARS
        )
        if long_word:
            self._reset()
        self._expire(self._end)
        hold = self._end
        if self._run:
            hold = self._run[0]
        elif self._word_at is not None and not long_word:
            hold = self._word_at
        shown, self._held = (
            self._held[: hold - self._base],
            self._held[hold - self._base :],
        )
        self._base = hold
        return shown

    def _stop(self) -> str:
        """The reply ends where the copy began: the text before it goes out, the rest never."""
        at = self._run[0]
        shown = self._held[: at - self._base]
        self._cut.append(self._held[at - self._base :])
        self.withheld = self._end - at
        self._held, self._base = "", self._end
        return shown

    def _expire(self, end: int) -> None:
        """A run spread wider than _ECHO_HELD_CHARS is markup, not copied words: it ends."""
        if self._run and end - self._run[0] > _ECHO_HELD_CHARS:
            self._reset()

    def _reset(self) -> None:
        """No run goes on over this point: code, a long token, a script without spaces."""
        self._run.clear()
        self._states = [0] * len(self.indexes)
        self._lengths = [0] * len(self.indexes)
        self._copied = 0
        self._own.gap()


def _echo_words(text: str) -> list[str]:
    return [w for w in map(echo_word, text.split()) if w]


# System prompts kept indexed at once: a council's five, a retry's, a tool round's.
_PROMPTS_KEPT = 8


class EchoIndex:
    """What a run's replies may not copy, indexed as the conversation grows and shared by every
    request of the run (tool rounds, retries, a council's lanes): each speaker's turns in an
    index of their own, the pipe's notes in one, and the latest system prompts by their text.

    A request indexes only the turns it is shown that no request of the run was shown before
    (the order of sources does not matter: no run goes over a gap), so it costs what is new,
    not the whole history; and a council answer may restate its speaker's own (`own`).
    """

    def __init__(self) -> None:
        self._speakers: dict[str, PassageIndex] = {}
        self._notes = PassageIndex()
        self._turns: dict[int, Turn] = {}  # the turns looked at, by identity
        self._seen: set[tuple[str | None, str]] = set()  # (speaker, text) indexed
        self._prompts: dict[str, PassageIndex] = {}

    def guard(
        self,
        system_prompt: str,
        shown: list[Turn],
        own: str | None = None,
        free: Iterable[str] = (),
    ) -> EchoGuard:
        """An echo guard for a reply shown `system_prompt` and the fitted turns `shown`: the
        participants' turns and the pipe's notes (not the user's words); `own`'s turns are no
        source."""
        for turn in shown:
            if id(turn) in self._turns or (turn.speaker is None and not turn.note):
                continue  # indexed already; or the user's own words, which may be kept
            self._turns[id(turn)] = turn  # kept, so its id stays its own
            key = (None if turn.note else turn.speaker, _text_of(turn.content))
            if key not in self._seen:  # the same text again (a note), or a cut copy
                self._seen.add(key)
                index = self._notes
                if not turn.note:
                    index = self._speakers.setdefault(key[0] or "", PassageIndex())
                index.add(key[1])
        theirs = [ix for who, ix in self._speakers.items() if who != own]
        return EchoGuard(
            indexes=[self._prompt(system_prompt), self._notes, *theirs], free=free
        )

    def _prompt(self, text: str) -> PassageIndex:
        index = self._prompts.pop(text, None) or PassageIndex([text])
        self._prompts[text] = index  # the newest last; the oldest goes first
        if len(self._prompts) > _PROMPTS_KEPT:
            del self._prompts[next(iter(self._prompts))]
        return index


# ============================================================================
# Speaker selection and endings: who speaks next (small policies), when it ends (conditions)
# ============================================================================


def match_alias(answer: str, aliases: list[str]) -> int | None:
    """Index of the alias the answer names: exact (normalized) first, else the earliest mention."""
    named = named_aliases(answer, aliases)
    return named[0] if named else None


def named_aliases(answer: str, aliases: list[str]) -> list[int]:
    """Indexes of every alias the answer names, an exact (normalized) answer first, then in
    the order they are mentioned (the longer name wins where two start at the same place).
    """
    said = normalize_name(answer)
    if not said:
        return []
    names = [normalize_name(a) for a in aliases]
    for i, name in enumerate(names):
        if name and name == said:
            return [i]
    found: list[tuple[int, int, int]] = []  # (position, -length, index)
    padded = f" {said} "
    for i, name in enumerate(names):
        pos = padded.find(f" {name} ") if name else -1
        while pos >= 0:
            found.append((pos, -len(name), i))
            pos = padded.find(f" {name} ", pos + 1)
    # A name inside a longer one ("Mia" in "Mia 2") is not
    kept: list[tuple[int, int, int]] = []
    for pos, neg, i in sorted(found):
        if not any(p <= pos and pos - neg <= p - n for p, n, _ in kept):
            kept.append((pos, neg, i))
    return list(dict.fromkeys(i for _, _, i in kept))


def next_in_order(last: int | None, count: int) -> int:
    return 0 if last is None else (last + 1) % count


def mention_order(text: str, aliases: list[str]) -> list[int]:
    """Indices of the participants named as `@Alias` in `text`, in the order first named.

    Case-insensitive; the longest alias wins where one is the start of another (@Bo, @Bob).
    """
    lowered = text.casefold()
    found: dict[int, int] = {}  # index -> first position
    taken: set[int] = set()  # text positions already claimed by a longer alias
    for i in sorted(range(len(aliases)), key=lambda j: -len(aliases[j])):
        name = aliases[i].casefold()
        for m in re.finditer(re.escape("@" + name) + r"(?!\w)", lowered):
            if m.start() not in taken:
                taken.add(m.start())
                found[i] = min(found.get(i, m.start()), m.start())
    return sorted(found, key=found.__getitem__)


def leading_mention(text: str, aliases: list[str]) -> int | None:
    """The participant the user's message starts by naming (`@Ada, you first`), if any: it
    speaks first in any order. A name later in the message leaves the order alone."""
    head = text.lstrip()
    named = mention_order(head, aliases) if head.startswith("@") else []
    if named and head.casefold().startswith("@" + aliases[named[0]].casefold()):
        return named[0]
    return None


class SpeakerPolicy:
    """Picks who speaks in turn `slot` after `last` (None before the first turn)."""

    managed = False  # a manager model picks (the status counts turns, not rounds)
    retired = (
        False  # the manager failed too often: the order picks for the rest of the run
    )

    async def pick(self, slot: int, last: int | None) -> Pick:
        raise NotImplementedError

    def heard(self, index: int, said: str) -> None:
        """What participant `index` said; most policies need not know."""


@dataclass
class Pick:
    """A selection policy's answer: who speaks (with the manager's reason), or why to end."""

    index: int = 0
    why: str = ""  # the manager's answer, shown in a collapsed block under the turn
    end: str = ""  # non-empty: end the conversation instead, for this reason


class FixedOrder(SpeakerPolicy):
    """Round robin: everyone once per round, in `order` (mentioned participants first)."""

    def __init__(self, order: list[int]) -> None:
        self.order = order

    async def pick(self, slot: int, last: int | None) -> Pick:
        return Pick(self.order[slot % len(self.order)])


class ShuffledRounds(SpeakerPolicy):
    """Random order that still has rounds: a fresh shuffle each round, so everyone speaks once a
    round, and nobody twice in a row, across a round's edge or the message before either.
    """

    def __init__(
        self,
        count: int,
        rng: random.Random,
        previous: int | None = None,
        first: int | None = None,
    ) -> None:
        self.count = count
        self.rng = rng
        self.previous = previous  # the last speaker of the message before, if any
        self.first = first  # who the user named to speak first, if anyone
        self._order: list[int] = []

    async def pick(self, slot: int, last: int | None) -> Pick:
        if slot % self.count == 0 or not self._order:
            self._order = self._shuffle(self.previous if last is None else last)
            if slot == 0 and self.first is not None:
                self._order.remove(self.first)
                self._order.insert(0, self.first)
        return Pick(self._order[slot % self.count])

    def _shuffle(self, last: int | None) -> list[int]:
        order = list(range(self.count))
        self.rng.shuffle(order)
        if len(order) > 1 and order[0] == last:
            swap = self.rng.randrange(1, len(order))
            order[0], order[swap] = order[swap], order[0]
        return order


class NamedFirst(SpeakerPolicy):
    """The participant the user named first speaks first; `policy` (the manager) picks after."""

    def __init__(self, policy: SpeakerPolicy, first: int) -> None:
        self.policy = policy
        self.first = first
        self.managed = policy.managed

    @property
    def retired(self) -> bool:  # type: ignore[override]
        return self.policy.retired

    async def pick(self, slot: int, last: int | None) -> Pick:
        return Pick(self.first) if slot == 0 else await self.policy.pick(slot, last)

    def heard(self, index: int, said: str) -> None:
        self.policy.heard(index, said)


class Handoffs(SpeakerPolicy):
    """@mentions: those the user named first, then the rest, every round; a participant that
    ends its turn addressing another (`@Name` in its last paragraph) hands it the next turn.
    """

    def __init__(self, order: list[int], aliases: list[str]) -> None:
        self.order = order
        self.aliases = aliases
        self._left: list[int] = []  # who has not spoken yet this round
        self._handed: int | None = None

    async def pick(self, slot: int, last: int | None) -> Pick:
        if slot % len(self.order) == 0:
            self._left = list(self.order)
        index, self._handed = self._handed, None
        if index is None:
            index = self._left[0] if self._left else self.order[slot % len(self.order)]
        if index in self._left:
            self._left.remove(index)
        return Pick(index)

    def heard(self, index: int, said: str) -> None:
        last = said.strip().split("\n\n")[-1]
        named = [i for i in mention_order(last, self.aliases) if i != index]
        self._handed = named[-1] if named else None


# The manager answers with a name: a few tokens. Bounding it keeps a small model from rambling
# for a minute per attempt; a manager seen thinking (an unclosed think tag) gets room for it.
MANAGER_ANSWER_TOKENS = 48
MANAGER_THINKING_TOKENS = 1024
_OPEN_THINK_RE = re.compile(
    r"<(?:think|thinking|reasoning|reason|thought)>|\|begin_of_thought\|", re.IGNORECASE
)


def strip_reasoning(text: str) -> str:
    """An answer without its reasoning: closed think blocks, and an unclosed one to the end."""
    text = THINK_RE.sub("", text)
    match = _OPEN_THINK_RE.search(text)
    return text[: match.start()] if match else text


def manager_pick(
    answer: str, aliases: list[str], last: int | None, wording: str = ""
) -> tuple[int | None, str]:
    """Who the manager's answer picks, else what is wrong with it.

    A name standing alone on a line picks (the last such line). Otherwise the answer must
    pick exactly one participant, read as a person would: a name in a reason ("since Ann
    just spoke"), in brackets, after "not", as a possessive, in a list of names (an echoed
    candidate list), the last speaker, or in a sentence repeating the prompt's own `wording`
    ("The last speaker is Ben.", "…should end now, choose Ana") picks no one.
    """
    alone = [
        i
        for line in answer.splitlines()
        for i, alias in enumerate(aliases)
        if normalize_name(line) and normalize_name(line) == normalize_name(alias)
    ]
    free = [i for i in alone if i != last]
    if free:
        return free[-1], ""
    echo = _word_grams(wording or manager_wording(DEFAULT_MANAGER_PROMPT), aliases)
    named: list[int] = []
    listed = echoed = False
    for clause in _CLAUSE_RE.split(answer):
        clause = _ASIDE_RE.sub(" ", _POSSESSIVE_RE.sub(" ", clause or ""))
        found = _names_in(clause, aliases)
        if _echoes(clause, echo, aliases):
            echoed = echoed or bool(found)
            continue
        for group in found:
            listed = listed or len(group) > 1
            named += group if len(group) == 1 else []
    picked = list(dict.fromkeys(i for i in named if i != last))
    if len(picked) == 1:
        return picked[0], ""
    if len(picked) > 1 or listed:
        return None, "Several participants are named; answer with one name only."
    if echoed:
        return None, "That repeats the question; answer with one name only."
    if named:
        return None, f"{aliases[named[0]]} has just spoken; pick someone else."
    return None, f"'{_short(answer, 40)}' names none of the participants."


# Sentences end at . ! ? ; : or a line break; "so" and "therefore" start a new one.
_CLAUSE_RE = re.compile(
    r"[.!?;:\n]+|,?\s+\b(?:so|therefore|hence|thus|which means)\b", re.IGNORECASE
)
# Names that are no pick: a reason or an aside ("since Ann just spoke", "(Ann spoke last)",
# "not Ann"), to the next comma; and a possessive ("Ann's point").
_ASIDE_RE = re.compile(
    r"\([^()]*\)|\[[^\[\]]*\]|\b(?:since|because|as|given|after|now that|considering|"
    r"following|not|rather than|instead of|than|unlike)\b[^,]*",
    re.IGNORECASE,
)
_POSSESSIVE_RE = re.compile(r"\b[\w-]+['’]s\b(?!\s+turn\b)")  # "Ben's turn" picks Ben
_BETWEEN_LISTED_RE = re.compile(r"[\s,/&*_`'\"]*(?:\b(?:and|or)\b)?[\s*_`'\"]*", re.I)


def _names_in(text: str, aliases: list[str]) -> list[list[int]]:
    """The participants named in `text`, in order, names joined only by commas, "and" or
    "or" grouped together (a list of names); the longest alias wins an overlap."""
    spans: list[tuple[int, int, int]] = []
    for i in sorted(range(len(aliases)), key=lambda j: -len(aliases[j])):
        name = aliases[i].strip()
        for m in (
            re.finditer(rf"(?<!\w){re.escape(name)}(?!\w)", text, re.I) if name else ()
        ):
            if not any(s < m.end() and m.start() < e for s, e, _ in spans):
                spans.append((m.start(), m.end(), i))
    groups: list[list[int]] = []
    end = -1
    for start, stop, i in sorted(spans):
        if groups and _BETWEEN_LISTED_RE.fullmatch(text[end:start]):
            groups[-1].append(i)
        else:
            groups.append([i])
        end = stop
    return groups


def _plain_words(text: str, aliases: list[str]) -> list[str]:
    names = {w for a in aliases for w in normalize_name(a).split()}
    return [w for w in re.findall(r"[a-z]+", text.lower()) if w not in names]


def _word_grams(text: str, aliases: list[str]) -> set[tuple[str, ...]]:
    """Every run of three words in `text`'s statements, names left out; its questions are
    answered, not echoed ("Who should speak next?": "Ben should speak next")."""
    grams: set[tuple[str, ...]] = set()
    for sentence in re.split(r"(?<=[.!?:;\n])", text):
        if not sentence.rstrip().endswith("?"):
            words = _plain_words(sentence, aliases)
            grams.update(zip(words, words[1:], words[2:], strict=False))
    return grams


def _echoes(clause: str, echo: set[tuple[str, ...]], aliases: list[str]) -> bool:
    """Half the clause's words or more (three at least) repeat the prompt's own runs of
    three words: "The last speaker is Ben." echoes "The last speaker was 'Ann'."."""
    words = _plain_words(clause, aliases)
    covered: set[int] = set()
    for k in range(len(words) - 2):
        if tuple(words[k : k + 3]) in echo:
            covered.update((k, k + 1, k + 2))
    return len(covered) >= 3 and 2 * len(covered) >= len(words)


ManagerAsk = Callable[[list[dict], int], Awaitable[str]]


MANAGER_END_ASK = f"If the conversation has reached its goal and should end now, answer {END_WORD} instead."


def manager_wording(template: str) -> str:
    """The words the manager is asked in, without the conversation or the names: what an
    answer must not merely repeat to count as a pick."""
    blank = {"history": "", "last_speaker": "", "participant_list": ""}
    again = f"Answer with exactly one of: (or {END_WORD}), and nothing else."
    return f"{fill_template(template, blank)}\n{MANAGER_END_ASK}\n{again}"


class ManagerChoice(SpeakerPolicy):
    """The manager model's pick, re-asked once with what was wrong.

    An answer of END ends the conversation. An error or timeout, or no pick after the
    re-ask, gives the turn to the next participant in order, and the status says so. After
    MANAGER_FAILURES failures in a run it is not asked again: the order falls back for the
    rest of the run, with one line saying so.
    """

    managed = True

    def __init__(
        self,
        ask: ManagerAsk,
        prompt: Callable[[int | None], str],
        system: str,
        aliases: list[str],
        status: Callable[..., None],
        max_tokens: int = 0,
        wording: str = "",
    ) -> None:
        self.ask = ask
        self.prompt = prompt
        self.system = system
        self.aliases = aliases
        self.status = status
        self.max_tokens = max_tokens  # the turns' bound (MAX_TOKENS); 0: none
        self.wording = wording or manager_wording(DEFAULT_MANAGER_PROMPT)
        self._room = MANAGER_ANSWER_TOKENS
        self.failures = 0  # answers without a pick and errors, this run
        self.retired = (
            False  # failed MANAGER_FAILURES times: the order picks from now on
        )

    async def pick(self, slot: int, last: int | None) -> Pick:
        aliases = self.aliases
        fallback = next_in_order(last, len(aliases))
        if len(aliases) == 1:
            return Pick(0)
        if self.retired:
            return Pick(fallback)
        messages = [
            {"role": "system", "content": self.system},
            {
                "role": "user",
                "content": f"{self.prompt(last).rstrip()}\n\n{MANAGER_END_ASK}",
            },
        ]
        while True:
            try:
                raw = await self.ask(messages, self._bound())
            except (ModelCallError, TimeoutError) as exc:
                self.failures += 1
                late = isinstance(exc, TimeoutError)
                return self._fall_back(
                    fallback, "took too long" if late else f"failed ({exc})"
                )
            if _OPEN_THINK_RE.search(THINK_RE.sub("", raw)):
                self._room = (
                    MANAGER_THINKING_TOKENS  # it thinks first: room from now on
                )
            answer = strip_reasoning(raw).strip()
            picked, problem = manager_pick(answer, aliases, last, self.wording)
            if picked is not None:
                self.status(f"Manager picked {aliases[picked]}.", done=False)
                return Pick(picked, why=answer)
            if normalize_name(answer) == END_WORD.lower() or (
                answer and normalize_name(answer.splitlines()[-1]) == END_WORD.lower()
            ):
                return Pick(end="the manager ended it")
            self.failures += 1
            log.debug(
                "manager failure %d of %d: %s", self.failures, MANAGER_FAILURES, problem
            )
            if self.failures >= MANAGER_FAILURES or len(messages) > 2:
                return self._fall_back(
                    fallback, f"{_why(problem)} (last: '{_short(answer, 24)}')"
                )
            messages += [
                {"role": "assistant", "content": raw},
                {
                    "role": "user",
                    "content": f"{problem} Answer with exactly one of: {', '.join(aliases)} "
                    f"(or {END_WORD}), and nothing else.",
                },
            ]

    def _fall_back(self, fallback: int, what: str) -> Pick:
        """This turn goes to the next in order; after MANAGER_FAILURES failures every turn of
        the run does, and the one line says so."""
        nxt = self.aliases[fallback]
        if self.failures >= MANAGER_FAILURES:
            self.retired = True
            self.status(
                f"Manager {_short(what, 70)}; round robin from here ({nxt} next)."
            )
        else:
            self.status(f"Manager {_short(what, 70)}; {nxt} speaks next (round robin).")
        return Pick(fallback)

    def _bound(self) -> int:
        return min(self._room, self.max_tokens) if self.max_tokens else self._room


def _why(problem: str) -> str:
    """A manager's failed answer in a few words, for the status line."""
    if "names none" in problem:
        return "named no participant"
    if "has just spoken" in problem:
        return "picked the same speaker twice"
    return "gave no usable name"


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def manager_prompt(
    template: str, history: str, aliases: list[str], last: int | None
) -> str:
    """The manager's prompt template filled in; before anyone spoke it says so in words."""
    if last is None:
        template = re.sub(
            r"The last speaker was '\{last_speaker\}'\.\s*",
            "Nobody has spoken yet. ",
            template,
        )
    return fill_template(
        template,
        {
            "history": history,
            "last_speaker": "None" if last is None else aliases[last],
            "participant_list": ", ".join(aliases),
        },
    )


@dataclass
class Progress:
    """What the ending conditions look at, updated after every turn."""

    slots: int = 0  # turns taken, passes included
    spoken: int = 0
    passes: int = 0
    passed_since_spoken: set[str] = field(
        default_factory=set
    )  # who passed since a real turn
    tokens: int = 0
    last_alias: str = ""
    last_said: str = ""
    sitting_out: set[str] = field(
        default_factory=set
    )  # whose model cannot hold the conversation: they speak no more

    def record(self, alias: str, said: str, passed: bool, tokens: int) -> None:
        self.slots += 1
        self.tokens = tokens
        self.last_alias, self.last_said = alias, said
        if not said and not passed:
            return  # nothing was said (it could not answer): neither spoken nor passed
        if passed:
            self.passes += 1
            self.passed_since_spoken.add(alias)
        else:
            self.spoken += 1
            self.passed_since_spoken.clear()


class EndCondition(Protocol):
    """Says why the conversation ends now (checked after every turn), or None to go on."""

    label: str  # what the final status says when this ended it ("" for the rounds)

    def check(self, progress: Progress) -> str | None: ...


class RoundsDone:
    """Ends when every round's turns were taken."""

    label = ""

    def __init__(self, rounds: int, count: int) -> None:
        self.rounds, self.total = rounds, rounds * count

    def check(self, progress: Progress) -> str | None:
        if progress.slots < self.total:
            return None
        return f"it reached its {_count(self.rounds, 'round')}"


class StopPhraseSaid:
    """Ends when a participant says the stop phrase as a line of its own (case, spacing and
    punctuation ignored): a sentence that merely contains the words, or a quote, does not.
    """

    label = "stop phrase said"

    def __init__(self, phrase: str) -> None:
        self.phrase = phrase
        self._folded = normalize_name(phrase)

    def check(self, progress: Progress) -> str | None:
        lines = progress.last_said.splitlines()
        said = (normalize_name(ln) for ln in lines if not ln.lstrip().startswith(">"))
        if self._folded and self._folded in said:
            return f"{progress.last_alias} said the stop phrase “{self.phrase}”"
        return None


class TimeBudget:
    """Ends after a turn that finishes `seconds` or more after the conversation started."""

    label = "time budget used up"

    def __init__(self, seconds: float, clock: Clock, started: float) -> None:
        self.seconds, self.clock, self.started = seconds, clock, started

    def check(self, progress: Progress) -> str | None:
        if self.clock.now() - self.started < self.seconds:
            return None
        return f"the time budget of {self.seconds:g} s was used up"


class TokenBudget:
    """Ends once the participants' replies used `limit` tokens (prompt and reply)."""

    label = "token budget used up"

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def check(self, progress: Progress) -> str | None:
        if progress.tokens < self.limit:
            return None
        return f"the budget of {self.limit:,} tokens was used up ({progress.tokens:,})"


class EveryonePassed:
    """Ends when everyone who still speaks passed since the last turn someone spoke; those
    sitting out (their model cannot hold the conversation) cannot pass, nor block it."""

    label = "everyone passed"

    def __init__(self, aliases: list[str]) -> None:
        self.aliases = set(aliases)

    def check(self, progress: Progress) -> str | None:
        speaking = self.aliases - progress.sitting_out
        if speaking and progress.passed_since_spoken >= speaking:
            return "everyone passed"
        return None


def is_pass(said: str) -> bool:
    """A reply that is only the word PASS (any case, punctuation or formatting around it)."""
    return normalize_name(said) == SKIP_WORD.lower()


_VOTE_RE = re.compile(
    r"^[\s>*_#`-]*vote\s*[*_]*\s*[:：]\s*(.+)$", re.IGNORECASE | re.MULTILINE
)


def parse_vote(said: str) -> str:
    """The choice on the reply's last `VOTE: <choice>` line, without trailing reasons; '' when
    the reply casts no vote (an abstention)."""
    matches = _VOTE_RE.findall(said)
    if not matches:
        return ""
    line = re.split(r" [—–-] |[.;!?]|, because", matches[-1], maxsplit=1)[0]
    return _short(line.strip(" *_`\"'"), 60)


def tally(votes: list[tuple[str, str]]) -> str:
    """`choice N (who, …)` for each choice, most votes first, spelled as first cast."""
    groups: dict[str, tuple[str, list[str]]] = {}
    for alias, choice in votes:
        key = normalize_name(choice)
        if key:
            groups.setdefault(key, (choice, []))[1].append(alias)
    ranked = sorted(
        groups.values(), key=lambda g: -len(g[1])
    )  # stable: first cast first
    return " · ".join(
        f"{choice} {len(who)} ({', '.join(who)})" for choice, who in ranked
    )


REVIEW_RULES = (
    "You review the other participants' answers to the user's last message; yours is not "
    "among them, and their names are hidden."
)


def review_ask(answers: list[str]) -> str:
    """The ranking question: the answers as Response A, B, … (the reviewer's own left out)."""
    shown = "\n\n".join(
        f'Response {chr(65 + i)}:\n"{text}"' for i, text in enumerate(answers)
    )
    last = ", ".join(chr(65 + i) for i in reversed(range(len(answers))))
    return (
        f"Here are the answers, without names:\n\n{shown}\n\nRank them from best to worst for "
        f"accuracy and insight: a sentence or two on why, then one last line such as "
        f"`RANKING: {last}`."
    )


_RANKING_RE = re.compile(
    r"^[\s>*_#`-]*ranking\s*[*_]*\s*[:：][ \t]*(.*)$", re.IGNORECASE | re.MULTILINE
)
_LIST_ITEM_RE = re.compile(r"^\s*(?:\d{1,2}\s*[.):]|[-*•])\s*\S")
# "Response C", "answer c", "Option C": the letter. "N/A" is no letter.
_RANK_NAMED_RE = re.compile(
    r"\b(?:responses?|answers?|options?|candidates?)\s+([A-Za-z])(?![\w'’])", re.I
)
_RANK_REMARK_RE = re.compile(
    r"\([^()]*[A-Za-z]{2}[^()]*\)|\[[^\[\]]*[A-Za-z]{2}[^\[\]]*\]"
)
_RANK_LETTER_RE = re.compile(r"(?<![\w'’])([A-Z])(?![\w'’]|-[a-z])")
# Words after a leading "A" that make it a letter ("A is best", "A then C"); any other word
# makes it the article ("A close call, but C > A > B").
_RANK_VERBS = frozenset(
    "is was and then over ranks ranked rank comes came beats beat edges edged first second "
    "third fourth last best worst next followed slightly clearly narrowly just leads wins "
    "tops outranks ahead before above after better stronger weaker gets takes in at has had "
    "gives provides offers answers addresses covers explains scores scored remains places "
    "placed or vs versus".split()
)
_RANK_WORD_RE = re.compile(r"[A-Za-z]+")


def _ranking_text(said: str) -> str | None:
    """The text of the reply's last `RANKING:` line; a list under it (`1. C`) joins it."""
    matches = list(_RANKING_RE.finditer(said))
    if not matches:
        return None
    head = matches[-1].group(1)
    if head.strip() and not _LIST_ITEM_RE.match(head):
        return head
    items = [head] if head.strip() else []
    for line in said[matches[-1].end() :].splitlines()[1:]:
        if not line.strip() and not items:
            continue
        if not _LIST_ITEM_RE.match(line):
            break
        items.append(line)
    return ", ".join(items)


def parse_ranking(said: str, count: int) -> list[int]:
    """The order (0-based response indexes) on the reply's last `RANKING:` line; [] if none.

    A letter is one standing alone (`C > A > B`, `Response C`, `C (best)`), never a word's
    first letter nor the article ("A close call, but …"); remarks in brackets are skipped.
    """
    text = _ranking_text(said)
    if text is None:
        return []
    text = _RANK_NAMED_RE.sub(lambda m: f" {m.group(1).upper()} ", text)
    text = re.sub(r"\bN/A\b", " ", text, flags=re.IGNORECASE)
    text = _RANK_REMARK_RE.sub(",", text)
    text = re.sub(r"[*_`\"“”‘’']", " ", text)
    letters = [
        m.group(1)
        for m in _RANK_LETTER_RE.finditer(text)
        if ord(m.group(1)) - 65 < count and not _article(text, m)
    ]
    if not letters:  # all lower case ("c > a > b"): only when nothing else is said
        words = _RANK_WORD_RE.findall(text)
        if words and all(len(w) == 1 or w.lower() in _RANK_VERBS for w in words):
            letters = [w.upper() for w in words if len(w) == 1]
    order = [ord(x) - 65 for x in letters if 0 <= ord(x) - 65 < count]
    return list(dict.fromkeys(order))


def _article(text: str, match: re.Match) -> bool:
    """An "A" that is the article: followed by a lower-case word that is no ranking verb."""
    if match.group(1) != "A":
        return False
    after = re.match(r"\s+([a-z]+)", text[match.end() :])
    return bool(after) and after.group(1) not in _RANK_VERBS


def ranking_table(rankings: dict[str, list[str]], aliases: list[str]) -> str:
    """The combined peer ranking as a markdown table: points (a first place is worth as many
    as the answers a reviewer saw, the last one 1), then who placed each where; nobody ranks
    their own answer."""
    points = {alias: 0 for alias in aliases}
    placed: dict[str, list[str]] = {alias: [] for alias in aliases}
    for reviewer, order in rankings.items():
        for place, alias in enumerate(order):
            points[alias] += len(aliases) - 1 - place
            placed[alias].append(f"{md_text(reviewer)}: {_ordinal(place + 1)}")
    ranked = sorted(
        aliases, key=lambda a: -points[a]
    )  # stable: ties keep the turn order
    rows = [
        f"| {i} | {md_text(alias)} | {points[alias]} | {', '.join(placed[alias]) or '–'} |"
        for i, alias in enumerate(ranked, 1)
    ]
    return "\n".join(
        ["| # | Answer by | Points | Placed by |", "|---|---|---|---|", *rows]
    )


def _ordinal(n: int) -> str:
    return f"{n}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(n if n < 20 else n % 10, 'th') }"


# ============================================================================
# Direction: who speaks, when it ends, what each speaker is told, and how it closes
# ============================================================================


@dataclass
class TurnPlan:
    """One turn the direction asks for: who speaks, what they are told, how it is judged."""

    speaker: Participant
    kind: Literal["turn", "closing", "vote", "review", "words"] = (
        "turn"  # words: the user's
    )
    rules: str = ""  # about this turn, in the speaker's system prompt
    ask: str = ""  # added to the last message (the closing's task, the vote's question)
    why: str = ""  # the manager's reason, shown under the heading
    pass_allowed: bool = False
    hides: int = (
        0  # the conversation's newest turns this speaker does not see (a review)
    )

    @property
    def guarded(self) -> bool:
        """Only conversation turns are held to speaking as themselves; a verdict may quote
        everyone (`**Pro:** …`)."""
        return self.kind == "turn"


@dataclass
class Heard:
    """What a turn came to: the text said (without notices) and whether it was a PASS."""

    said: str
    passed: bool = False
    benched: bool = (
        False  # its model cannot hold the conversation: it sits out the rest
    )


class Moderator:
    """Between rounds, the user may add words, or end the conversation, through the host's own
    input prompt; an empty answer, Cancel, a closed tab or the timeout goes on."""

    def __init__(
        self, ask: Callable[[dict], Awaitable[Any]], clock: Clock, seconds: float
    ) -> None:
        self._ask = ask
        self._clock = clock
        self._seconds = seconds

    async def between(self, next_round: int, rounds: int) -> str:
        """What the user typed before round `next_round` ('' to go on, END_WORD to close)."""
        event = {
            "type": "input",
            "data": {
                "title": f"Before round {next_round} of {rounds}",
                "message": f"Anything to add before round {next_round}? Everyone will hear it. "
                "Leave it empty to go on, or type end to close the conversation.",
                "placeholder": "Your words, or end",
            },
        }
        try:
            answer = await within(self._clock, self._seconds, self._ask(event))
        except TimeoutError:
            log.debug("no moderator answer within %g s; going on", self._seconds)
            return ""
        except Exception as exc:  # a closed tab or a host error: the run goes on
            log.warning("the moderator prompt failed (%s); going on", exc)
            return ""
        text = answer.strip() if isinstance(answer, str) else ""  # Cancel answers False
        return END_WORD if normalize_name(text) == END_WORD.lower() else text


class Direction:
    """The conversation's rules, built once from the config: the policy that picks speakers, the
    endings checked after each turn, the rules each speaker is told, and the closing."""

    def __init__(
        self,
        config: ConversationConfig,
        participants: list[Participant],
        closer: Participant | None,
        policy: SpeakerPolicy,
        endings: list[EndCondition],
        moderator: Moderator | None = None,
    ) -> None:
        self.config = config
        self.participants = participants
        self.closer = closer
        self.policy = policy
        self.endings = endings
        self.moderator = moderator
        self.council = config.selection == "council"  # a round's turns at once, unseen
        self.progress = Progress()
        self.reason = ""  # why it ended
        self.outcome = ""  # how, for the final status ("" when its rounds ended it)
        self._last: int | None = None
        self.benched: set[str] = (
            set()
        )  # participants whose model cannot hold the conversation
        # The last council round's answers
        self.answers: list[tuple[Participant, str]] = []
        self._asked_at = 0  # the slot before which the moderator was last asked
        # Only the rounds can end it: nothing to explain, the transcript looks as it always did.
        self.explains = len(endings) > 1 or policy.managed

    async def next_turns(self) -> list[TurnPlan]:
        """The next turns to speak: one, or a council round's all at once; [] once it ended.

        Between rounds the moderator, if any, is asked first."""
        slot, count = self.progress.slots, len(self.participants)
        if (
            not self.reason
            and self.moderator
            and slot % count == 0 < slot != self._asked_at
        ):
            self._asked_at = slot
            words = await self.moderator.between(slot // count + 1, self.config.rounds)
            if words == END_WORD:
                self.reason, self.outcome, self.explains = (
                    "the moderator ended it",
                    "ended",
                    True,
                )
            elif words:
                return [TurnPlan(self.participants[0], "words", ask=words)]
        if self.reason:
            return []
        if self.council:
            self.answers = []
            rules = self.turn_rules(slot)
            return [TurnPlan(p, rules=rules) for p in self.participants]
        pick = await self.policy.pick(slot, self._last)
        if pick.end:
            self.reason = self.outcome = pick.end
            return []
        self._last = pick.index
        return [
            TurnPlan(
                self.participants[pick.index],
                rules=self.turn_rules(slot),
                why=pick.why,
                pass_allowed=self.config.pass_allowed,
            )
        ]

    def heard(self, plan: TurnPlan, heard: Heard, tokens: int) -> None:
        """Record a turn; the first ending that holds ends the conversation."""
        if plan.kind == "words":
            return  # the user's own words are not a turn
        self.progress.record(plan.speaker.alias, heard.said, heard.passed, tokens)
        self.policy.heard(plan.speaker.index, heard.said)
        if self.council and heard.said and not heard.passed:
            self.answers.append((plan.speaker, heard.said))
        if heard.benched:
            self.benched.add(plan.speaker.alias)
            self.progress.sitting_out.add(plan.speaker.alias)
            if len(self.benched) == len(self.participants):
                self.reason = "no participant's model can hold the conversation"
                self.outcome, self.explains = "nobody could go on", True
                return
        for ending in self.endings:
            if reason := ending.check(self.progress):
                self.reason, self.outcome = reason, ending.label
                return

    def where(self, plans: list[TurnPlan]) -> str:
        """The status while turns run: the round and who speaks ("Round 2 of 3 · Ana")."""
        plan = plans[0]
        names = _and([p.speaker.alias for p in plans])
        if plan.kind != "turn":
            what = {"closing": "Closing", "vote": "Vote", "review": "Peer review"}.get(
                plan.kind
            )
            return f"{what} · {names}"
        count, slot = len(self.participants), self.progress.slots
        if self.council:
            return f"Round {slot // count + 1} of {self.config.rounds} · {names} answer at once"
        if self.policy.managed and self.policy.retired:
            return f"Turn {slot + 1} of {self.config.rounds * count} · {names} (round robin)"
        if self.policy.managed:
            return f"Turn {slot + 1} of {self.config.rounds * count} · {names}"
        return f"Round {slot // count + 1} of {self.config.rounds} · {names}"

    def turn_rules(self, slot: int) -> str:
        """What a participant is told about its turn: how many remain, PASS, the stop phrase."""
        config, count = self.config, len(self.participants)
        total = config.rounds * count
        at_most = "at most " if config.max_seconds or config.max_total_tokens else ""
        rules = [
            f"This is turn {slot + 1} of {at_most}{total}; {total - slot - 1} more after yours."
        ]
        if self.council:
            rules = [
                f"Round {slot // count + 1} of {config.rounds}. Everyone answers this round at "
                "the same time: you do not see the others' answers of this round."
            ]
        elif config.selection in ("round_robin", "mention", "random"):
            rules.insert(0, f"Round {slot // count + 1} of {config.rounds}.")
        if config.pass_allowed:
            rules.append(
                f"If you have nothing useful to add, answer only the word {SKIP_WORD} and "
                "you will be skipped this turn."
            )
        if config.stop_phrase:
            rules.append(
                f"When the conversation has reached its goal, say “{config.stop_phrase}” to end it "
                "(on a line of its own)."
            )
        return " ".join(rules)

    def closing(self) -> Closing:
        """The steps that follow the conversation, fixed now that it has ended."""
        return Closing(self.config, self.participants, self.closer, self.answers)

    def end_line(self) -> str:
        """The line under the conversation saying why it ended ('' when only rounds could)."""
        if not self.explains:
            return ""
        progress = self.progress
        passes = f", {progress.passes} passed" if progress.passes else ""
        turns = _count(progress.spoken, "turn")
        return f"*🏁 The conversation ended after {turns}{passes}: {md_text(self.reason)}.*"


class Closing:
    """What follows the conversation, as explicit steps fixed when it ends: the council's peer
    review, its combined ranking and the closing speaker's turn; or everyone's vote."""

    def __init__(
        self,
        config: ConversationConfig,
        participants: list[Participant],
        closer: Participant | None,
        answers: list[tuple[Participant, str]],
    ) -> None:
        self.config = config
        self.participants = participants
        self.closer = closer
        self.answers = list(answers)  # the last council round's
        steps: list[Callable[[], tuple[str, list[TurnPlan]]]] = []
        if config.closing == "vote":
            steps.append(self._vote)
        else:
            if (
                config.peer_review
                and config.selection == "council"
                and len(answers) > 1
            ):
                steps += [self._reviews, self._ranking]
            if closer is not None:
                steps.append(self._closing)
        self._steps = deque(steps)
        self.ranking = ""  # the combined ranking line, once the reviews are in
        self.spoken: list[tuple[TurnPlan, Heard]] = []

    def next(self) -> tuple[str, list[TurnPlan]] | None:
        """The next step: a line to show first and the turns to speak; None: it is over."""
        return self._steps.popleft()() if self._steps else None

    def heard(self, plans: list[TurnPlan], heard: list[Heard]) -> None:
        self.spoken += zip(plans, heard, strict=True)

    def _vote(self) -> tuple[str, list[TurnPlan]]:
        return "", [
            TurnPlan(p, "vote", rules=VOTE_PROMPT, ask=VOTE_PROMPT)
            for p in self.participants
        ]

    def _reviews(self) -> tuple[str, list[TurnPlan]]:
        """Each participant with an answer ranks the others' answers, named A, B, …"""
        plans = []
        hides = len(self.answers)
        for p, _ in self.answers:
            others = [said for q, said in self.answers if q is not p]
            ask = review_ask(others)
            plans.append(
                TurnPlan(p, "review", rules=REVIEW_RULES, ask=ask, hides=hides)
            )
        return "", plans

    def _ranking(self) -> tuple[str, list[TurnPlan]]:
        """The reviews' combined ranking, as a table under a line."""
        rankings: dict[str, list[str]] = {}
        for plan, heard in self.spoken:
            if plan.kind != "review":
                continue
            others = [q.alias for q, _ in self.answers if q is not plan.speaker]
            order = parse_ranking(heard.said, len(others))
            if order:
                rankings[plan.speaker.alias] = [others[i] for i in order]
        aliases = [p.alias for p, _ in self.answers]
        if not rankings:
            self.ranking = "*🏅 Peer review: no reviewer gave a ranking.*"
        else:
            table = ranking_table(rankings, aliases)
            self.ranking = f"*🏅 Peer review, combined:*\n\n{table}"
        return self.ranking, []

    def _closing(self) -> tuple[str, list[TurnPlan]]:
        assert self.closer is not None
        prompt = getattr(self.config.closing, "prompt", "") or DEFAULT_CLOSING_PROMPT
        if self.ranking:
            table = self.ranking.split("\n\n", 1)[-1]
            prompt = (
                f"{prompt}\n\nThe participants ranked each other's answers:\n{table}"
            )
        aliases = ", ".join(p.alias for p in self.participants)
        rules = (
            f"You are {self.closer.alias}. The group conversation between {aliases} has ended, "
            f"and you close it.\n\n{prompt}"
        )
        return "", [TurnPlan(self.closer, "closing", rules=rules, ask=prompt)]

    def verdict(self) -> str:
        """The tally line after a vote ('' without one); a reply without a VOTE line abstains."""
        votes = [(plan, heard) for plan, heard in self.spoken if plan.kind == "vote"]
        if not votes:
            return ""
        cast = [(plan.speaker.alias, parse_vote(heard.said)) for plan, heard in votes]
        counted = [(alias, choice) for alias, choice in cast if choice]
        abstained = [alias for alias, choice in cast if not choice]
        result = md_text(tally(counted)) if counted else "no votes"
        if abstained:
            result += f"; abstained: {md_text(', '.join(abstained))}"
        return f"*🗳️ Vote: {result}*"


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def make_direction(
    config: ConversationConfig,
    participants: list[Participant],
    closer: Participant | None,
    earlier: list[Turn],
    manager: ManagerChoice | None,
    rng: random.Random,
    clock: Clock,
    moderator: Moderator | None = None,
) -> Direction:
    """The policy and endings the config asks for; `earlier` turns are the chat so far."""
    aliases = [p.alias for p in participants]
    latest = next((t.content for t in reversed(earlier) if t.speaker is None), "")
    first = leading_mention(
        _text_of(latest), aliases
    )  # "@Ada, you first": in any order
    policy: SpeakerPolicy
    if manager is not None:
        policy = manager if first is None else NamedFirst(manager, first)
    elif config.selection == "random":
        spoke = next(
            (t.speaker for t in reversed(earlier) if t.speaker is not None), ""
        )
        policy = ShuffledRounds(
            len(aliases), rng, match_alias(spoke, aliases) if spoke else None, first
        )
    elif config.selection == "mention":
        named = mention_order(_text_of(latest), aliases)
        policy = Handoffs(
            named + [i for i in range(len(aliases)) if i not in named], aliases
        )
    else:
        named = [first] if first is not None else []
        policy = FixedOrder(named + [i for i in range(len(aliases)) if i not in named])
    endings: list[EndCondition] = [RoundsDone(config.rounds, len(aliases))]
    if config.stop_phrase:
        endings.append(StopPhraseSaid(config.stop_phrase))
    if config.max_seconds:
        endings.append(TimeBudget(config.max_seconds, clock, clock.now()))
    if config.max_total_tokens:
        endings.append(TokenBudget(config.max_total_tokens))
    if config.pass_allowed:
        endings.append(EveryonePassed(aliases))
    return Direction(config, participants, closer, policy, endings, moderator)


# ============================================================================
# Turn execution: stream a participant, run its tools, recover from its failures
# ============================================================================


@dataclass(frozen=True)
class Settings:
    """What one run reads, once at its start: the admin's valves as they are (a new valve needs
    no edit here) and the user's own choices with their defaults."""

    valves: Pipe.Valves  # a copy of the admin's valves: settings.valves.MAX_TOKENS
    shared_instruction: str = DEFAULT_SHARED_INSTRUCTION
    manager_system: str = DEFAULT_MANAGER_SYSTEM
    manager_prompt: str = DEFAULT_MANAGER_PROMPT
    show_manager_reason: bool = True
    sampling: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, valves: Any, user_valves: Any) -> Settings:
        def get(name: str, default: Any) -> Any:
            value = getattr(user_valves, name, None)
            return default if value in (None, "") else value

        return cls(
            valves=valves.model_copy(),
            shared_instruction=get(
                "AllParticipantsApendedMessage", DEFAULT_SHARED_INSTRUCTION
            ),
            manager_system=get("ManagerSystemMessage", DEFAULT_MANAGER_SYSTEM),
            manager_prompt=get("ManagerSelectionPrompt", DEFAULT_MANAGER_PROMPT),
            show_manager_reason=bool(get("ShowManagerReason", True)),
            sampling={
                "temperature": get("Temperature", 1.0),
                "top_p": get("Top_p", 0.8),
                "top_k": get("Top_k", 50),
            },
        )


@dataclass
class StreamResult:
    content: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    error: str | None = None
    shown: bool = False  # anything (content or reasoning) reached the transcript
    malformed: int = 0  # frames that were not JSON objects, skipped
    finish_reason: str = ""
    done: bool = False  # the stream's `[DONE]` arrived
    prompt_tokens: int = 0  # what the server's `usage` counted, if it sent one
    # why the reply was cut short: "length" | "time" | "speaker" | "echo" | "loop" | ""
    cut: str = ""
    tokens: int | None = None  # total tokens the backend reported (usage), if it did


async def call_tool(fn: Callable[..., Any], args: dict[str, Any]) -> Any:
    """Run a tool; one whose own code is synchronous runs in a thread, so its timeout holds.

    Open WebUI hands a sync tool over wrapped in a coroutine (its code in `__function__`) that
    would block the event loop, and every timer on it, until the tool returns.
    """
    if inspect.iscoroutinefunction(getattr(fn, "__function__", fn)):
        result = fn(**args)
    else:
        result = await asyncio.to_thread(_run_blocking_tool, fn, args)
    return await result if inspect.isawaitable(result) else result


def _run_blocking_tool(fn: Callable[..., Any], args: dict[str, Any]) -> Any:
    """In a worker thread: call the tool and, for the host's wrapper, run its coroutine here."""
    result = fn(**args)
    return asyncio.run(result) if inspect.iscoroutine(result) else result


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n… [{len(text) - limit} more characters cut]"


CHARS_PER_TOKEN_ESTIMATE = (
    4  # a count the backend did not send: about 4 characters a token
)


# The usage row of a turn that is not a conversation turn, after the alias.
ROW_KINDS = {"closing": " (closing)", "review": " (review)", "vote": " (vote)"}
MANAGER_ROW = "Manager"  # its Turns are its picks, left out of the total's


@dataclass
class UsageRow:
    """What one speaker's calls cost in a run (the manager's picks count as its turns)."""

    label: str  # the alias, "Manager", or "<alias> (closing)" (ROW_KINDS)
    model: str
    turns: int = 0
    prompt: int = 0
    completion: int = 0
    seconds: float = 0.0
    estimated: bool = False  # some count is the pipe's estimate, not the backend's

    def add(self, other: UsageRow) -> None:
        if other.label != MANAGER_ROW:  # its picks are not turns
            self.turns += other.turns
        self.prompt += other.prompt
        self.completion += other.completion
        self.seconds += other.seconds
        self.estimated = self.estimated or other.estimated


class UsageLedger:
    """Every model call of a run: the backend's token counts (or an estimate, marked) and the
    seconds it took, one row per speaker in the order they first spoke."""

    def __init__(self) -> None:
        self.rows: dict[str, UsageRow] = {}

    def row(self, label: str, model: str) -> UsageRow:
        return self.rows.setdefault(label, UsageRow(label, model))

    def count(
        self,
        row: UsageRow,
        usage: tuple[int, int] | None,
        messages: list[dict],
        reply: str,
        seconds: float,
    ) -> None:
        """One call: `usage` (prompt, completion) as the backend counted, else estimated."""
        if usage is None:
            chars = sum(len(_text_of(m.get("content"))) for m in messages)
            usage = (-(-chars // CHARS_PER_TOKEN_ESTIMATE), -(-len(reply) // 4))
            row.estimated = True
        row.prompt += usage[0]
        row.completion += usage[1]
        row.seconds += max(0.0, seconds)

    def total(self) -> UsageRow:
        total = UsageRow("Total", "")
        for row in self.rows.values():
            total.add(row)
        return total

    def message_usage(self) -> dict[str, int]:
        """The totals as a message's `usage`, where Open WebUI's info tooltip reads it."""
        total = self.total()
        return {
            "prompt_tokens": total.prompt,
            "completion_tokens": total.completion,
            "total_tokens": total.prompt + total.completion,
        }


def usage_block(ledger: UsageLedger, talked: float, part: bool = False) -> str:
    """The ledger as a collapsed table at the end of the message (history leaves it out).

    Turns are turns said (a PASS is none; the manager's are its picks, not in the total); a
    row's seconds are its model's, the total's the conversation's own (`talked`), as the
    status says it, so a council's rows, generated at once, add up to more."""
    total = ledger.total()
    total.seconds = talked
    # Five columns, the model under the name: it fits a phone (390 px).
    head = "| Speaker | Turns | Tokens in | Tokens out | Seconds |"
    lines = [head, "|---|--:|--:|--:|--:|"]
    for row in [*ledger.rows.values(), total]:
        mark = "~" if row.estimated else ""
        if row is total:
            name = "**Total**"
        else:
            # The page shows a <br> in a table as a line break, other tags as text.
            name = f"{md_text(row.label)}<br>{md_text(row.model)}"
        lines.append(
            f"| {name} | {row.turns} | {mark}{row.prompt:,} | "
            f"{mark}{row.completion:,} | {row.seconds:,.1f} |"
        )
    if total.estimated:
        lines.append(
            "\n~ estimated (the backend sent no counts): about 4 characters a token."
        )
    what = (
        "Usage of this part" if part else "Usage"
    )  # `part`: Continue Response added it
    summary = f"{what}: {total.prompt + total.completion:,} tokens, {duration(talked)}"
    body = "\n".join(lines)
    head = f'<details type="usage" done="true">\n<summary>{summary}</summary>'
    return f"\n{head}\n\n{body}\n</details>\n"  # a blank line after the last turn


OLLAMA_OPTIONS = (
    "temperature",
    "top_p",
    "top_k",
    "stop",
)  # read by Ollama only in `options`


def for_backend(form: dict, profile: ModelProfile, num_ctx: int = 0) -> dict:
    """A request in the shape its model's backend reads.

    Open WebUI's Ollama path (`convert_payload_openai_to_ollama`) keeps only `options`, `stop`
    and `max_tokens` of a form: for an Ollama model the sampling, the bounds (`num_predict`)
    and the context the request was fitted to (`num_ctx`) go into `options`, where Ollama reads
    them. OpenAI-style APIs reject `top_k`.
    """
    form = dict(form)
    if profile.owned_by != "ollama":
        form.pop("top_k", None)
        return form
    options = dict(form.pop("options", None) or {})
    options.update((key, form.pop(key)) for key in OLLAMA_OPTIONS if key in form)
    if "max_tokens" in form:
        options["num_predict"] = form.pop("max_tokens")
    if num_ctx:
        options["num_ctx"] = num_ctx
    form.pop("stream_options", None)  # Ollama's last line always carries its counts
    return {**form, "options": options}


class LaneEmitter:
    """The emitter of a turn generated aside: its updates reach the screen only while its lane
    is the one shown; statuses always do."""

    def __init__(self, emitter: CoalescingEmitter) -> None:
        self._emitter = emitter
        self.shown = False

    async def update(self) -> None:
        if self.shown:
            await self._emitter.update()

    def post(self, event: dict[str, Any]) -> None:
        self._emitter.post(event)


# -- what every turn of a run shares, and where one turn is spoken ---------------------------


class Stage:
    """What every turn of one run shares, a council lane's too: the host, the settings, the
    models (profiles, context budget), who sits out, the usage ledger, and what the user was
    told once already (a shortened message, tools a model cannot call)."""

    def __init__(
        self,
        gateway: HostGateway,
        ctx: RequestContext,
        settings: Settings,
        clock: Clock,
        budget: ContextBudget,
        profiles: dict[str, ModelProfile],
        aliases: list[str],
        user_name: str,
        chat_system: str = "",
        want_usage: bool = False,
        may_say: Iterable[str] = (),
        closing_alias: str = "",
    ) -> None:
        self.gateway = gateway
        self.ctx = ctx
        self.settings = settings
        self.clock = clock
        self.budget = budget
        self.profiles = profiles
        self.aliases = aliases  # every participant's alias, in turn order
        self.user_name = user_name
        self.closing_alias = closing_alias  # who speaks the closing turn, if anyone
        self.chat_system = (
            chat_system  # the chat's own system prompt, if the user set one
        )
        self.want_usage = want_usage  # count tokens for a token budget
        self.ledger = UsageLedger()
        self.benched: set[str] = set()  # whose model cannot hold the conversation
        self.told_shortened: set[str] = (
            set()
        )  # models the user heard their message was cut for
        self.told_no_tools: set[str] = (
            set()
        )  # participants whose tools were said unavailable
        self.echoes = EchoIndex()  # what replies may not copy, indexed once for the run
        # What a participant is asked to say is never an echo: the stop phrase.
        self.may_say = [x for x in may_say if x.strip()]

    def max_tokens(self, p: Participant) -> int:
        """The participant's own limit from the setup, else the valve's; 0 means none."""
        return self.settings.valves.MAX_TOKENS if p.max_tokens is None else p.max_tokens


@dataclass
class Lane:
    """Where turns are spoken: the run's transcript and emitter, or a council turn's own (shown
    when its turn comes); the turns heard there; the tokens its replies used."""

    transcript: Transcript
    emitter: CoalescingEmitter | LaneEmitter
    turns: list[Turn]  # the chat so far, then every turn spoken here
    tokens: int = 0  # used by replies (usage, else estimated)
    speaking: bool = False  # a turn is streaming
    row: UsageRow = field(
        default_factory=lambda: UsageRow("", "")
    )  # the turn's ledger row
    restates_own: bool = False  # a council answer: restating its own is no echo

    def aside(self, transcript: Transcript, emitter: LaneEmitter) -> Lane:
        """A lane for one turn generated apart: its own screen, a copy of the turns so far;
        a council answer there revises its speaker's own."""
        return Lane(transcript, emitter, list(self.turns), restates_own=True)

    def notice(self, markdown: str) -> None:
        """A warning line in the transcript; history leaves it out."""
        self.transcript.add_notice(f"{NOTICE_PREFIX}{markdown}*")

    def failure_line(self, p: Participant, reason: str, then: str = "") -> None:
        reason = md_text(" ".join(reason.split())[:300])
        self.notice(f"{md_text(p.alias)} could not answer: {reason}{then}")


# -- what a participant is shown -------------------------------------------------------------


def tools_chars(profile: ModelProfile) -> int:
    return len(json.dumps(profile.tool_specs)) if profile.tool_specs else 0


@dataclass
class Shown:
    """A request's messages (None: not even the instructions fit) and what the reply may not
    copy; `shortened`: (kept, size) of the part cut most, for the user's notice."""

    messages: list[dict] | None
    sources: list[Turn] = field(default_factory=list)  # the turns, as fitted
    shortened: tuple[int, int] | None = None


class Briefing:
    """What a participant is shown on one turn: its system prompt, the turns it may see fitted
    to its model's context, and the form of its requests. No side effects."""

    def __init__(
        self, stage: Stage, plan: TurnPlan, profile: ModelProfile, seen: list[Turn]
    ) -> None:
        self.stage = stage
        self.plan = plan
        self.speaker = plan.speaker
        self.profile = profile
        self.seen = seen
        self.system = self.system_prompt()
        self.max_tokens = stage.max_tokens(plan.speaker)

    def system_prompt(self) -> str:
        """The model's own prompt and the chat's, then the persona, the turn's rules and the
        shared instruction; a closing speaker gets its task instead of the last three.
        """
        plan, stage = self.plan, self.stage
        if plan.kind == "closing":
            parts = [self.profile.system_prompt, stage.chat_system, plan.rules]
            return "\n\n".join(x.strip() for x in parts if x.strip())
        p = plan.speaker
        others = ", ".join(a for a in stage.aliases if a != p.alias) or "the user"
        shared = stage.settings.shared_instruction
        if "{alias}" not in shared:
            shared = (
                f"{shared.rstrip()} {p.alias}"  # v2's instruction ends with "...as"
            )
        shared = fill_template(shared, {"alias": p.alias, "others": others})
        # The shared instruction goes last: v2's ends mid-sentence ("...as <alias>").
        parts = [
            self.profile.system_prompt,
            stage.chat_system,
            p.persona,
            plan.rules,
            shared,
        ]
        return "\n\n".join(part.strip() for part in parts if part.strip())

    def shown(self, room: int | None) -> Shown:
        """The system prompt and the turns fitted into `room` characters (None: not fitted),
        with the turn's own ask added to the last message."""
        plan = self.plan
        system = {"role": "system", "content": self.system}
        turns, shortened = self.seen, None
        if room is not None:
            fitted = fit_turns(
                turns, room - len(plan.ask) - 2 - message_chars([system])
            )
            if fitted is None:
                return Shown(None)
            turns = fitted.turns
            if fitted.omitted:
                log.debug(
                    "%s: %d earlier turns left out", plan.speaker.alias, fitted.omitted
                )
            if fitted.shortened:
                shortened = max(fitted.shortened, key=lambda k: k[1] - k[0])
        messages = [
            system,
            *messages_for(plan.speaker.alias, turns, self.stage.user_name),
        ]
        if plan.ask:
            last = messages[-1]
            messages[-1] = {**last, "content": _merge(last["content"], plan.ask)}
        return Shown(messages, turns, shortened)

    def room(self, shrink: float = 1.0, tools: bool = True) -> int | None:
        """Characters a request's messages may take (tool specs and the reply set aside);
        None when the model's context size is unknown."""
        budget, profile = self.stage.budget, self.profile
        reserve = min(self.max_tokens or 1024, budget.limit(profile) // 2)
        room = budget.room_chars(profile, reserve, shrink)
        if room is None or not tools:
            return room
        return room - tools_chars(profile)

    def first_fit(self) -> tuple[Shown, int | None, bool]:
        """The turn's first request: what is shown, its room and whether tools are offered.

        A context that is only assumed (`CONTEXT_TOKENS`) never costs a participant its tools
        or its turns: the request goes as it is, and the server's answer decides. In a known
        context, tool definitions that leave no room for the conversation are left out.
        """
        room = self.room()
        shown = self.shown(room)
        tools = bool(self.profile.tool_specs)
        if shown.messages is None and not self.stage.budget.known(self.profile):
            return self.shown(None), None, tools
        if shown.messages is None and tools:
            room, tools = self.room(tools=False), False
            shown = self.shown(room)
        return shown, room, tools

    def request(self, messages: list[dict], **fields: Any) -> dict:
        """A request in the shape its model's backend reads (`for_backend`)."""
        return request_form(self.stage.budget, self.profile, messages, **fields)

    def reply_form(
        self, messages: list[dict], offer_tools: bool = False, streamed: bool = True
    ) -> dict:
        """A reply's request: sampling, bounds, the tools if offered; a streamed one asks for
        a usage frame, which calibrates the token estimate."""
        extra: dict[str, Any] = {**self.sampling(), **self.bounds()}
        if offer_tools:
            extra["tools"] = self.profile.tool_specs
        if streamed:
            extra["stream_options"] = {"include_usage": True}
        return self.request(messages, **extra)

    def bounds(self) -> dict[str, Any]:
        """max_tokens and stop sequences of the participant's requests."""
        bounds: dict[str, Any] = {}
        if self.max_tokens:
            bounds["max_tokens"] = self.max_tokens
        if self.stage.settings.valves.STOP_SEQUENCES and self.plan.guarded:
            stage = self.stage
            bounds["stop"] = stop_sequences(
                self.speaker.alias, stage.aliases, stage.user_name, stage.closing_alias
            )
        return bounds

    def sampling(self) -> dict[str, Any]:
        """The valves' sampling, with the participant's own temperature and top-p (the request
        takes the shape its backend reads in `for_backend`)."""
        sampling = dict(self.stage.settings.sampling)
        p = self.speaker
        own = {"temperature": p.temperature, "top_p": p.top_p}
        sampling.update({k: v for k, v in own.items() if v is not None})
        return sampling


def request_form(
    budget: ContextBudget, profile: ModelProfile, messages: list[dict], **fields: Any
) -> dict:
    """Every request of the run, in the shape its model's backend reads (`for_backend`)."""
    form = {"model": profile.model_id, "messages": list(messages), **fields}
    return for_backend(form, profile, budget.num_ctx(profile))


# -- one reply's stream: decode, guards, transcript, counts ----------------------------------


class ReplyStream:
    """One reply: its decoded events pass the guards into the lane's transcript, and what it
    came to (content, tool calls, finish, usage, a cut) is collected and counted."""

    def __init__(
        self, stage: Stage, lane: Lane, briefing: Briefing, sources: list[Turn]
    ):
        self.stage = stage
        self.lane = lane
        self.briefing = briefing
        self.result = StreamResult()
        self.content: list[str] = []
        self.calls = ToolCallAccumulator()
        self.filter = ReplyFilter(self.speaker_guard(), self.echo_guard(sources))

    def speaker_guard(self) -> SpeakerGuard | None:
        """A conversation turn ends at a line where it goes on as someone else: another
        participant, the closing speaker or the user."""
        if not self.briefing.plan.guarded:
            return None
        stage = self.stage
        said: dict[str, str] = {}  # what each voice said so far, to spot a recital
        for turn in self.lane.turns:
            if turn.note:
                continue
            name = stage.user_name if turn.speaker is None else turn.speaker
            said[name] = f"{said.get(name, '')}\n{_text_of(turn.content)}"
        voices = [*stage.aliases, stage.closing_alias, stage.user_name]
        return SpeakerGuard(self.briefing.speaker.alias, voices, said)

    def echo_guard(self, sources: list[Turn]) -> EchoGuard | None:
        """A conversation turn ends where it starts copying what it was shown (its system
        prompt, the turns `sources`), or itself."""
        if not self.briefing.plan.guarded:
            return None
        stage, p = self.stage, self.briefing.speaker
        own = p.alias if self.lane.restates_own else None
        return stage.echoes.guard(self.briefing.system, sources, own, stage.may_say)

    async def stream(
        self, messages: list[dict], offer_tools: bool, turn_ends_at: float
    ) -> StreamResult:
        """Stream the reply; it ends at the turn's wall-clock limit or after `silence` s quiet."""
        form = self.briefing.reply_form(messages, offer_tools)
        result, decoder = self.result, SSEDecoder()
        silence = self.stage.settings.valves.TURN_TIMEOUT
        loop = asyncio.get_running_loop()
        started = self.stage.clock.now()
        stream = self.stage.gateway.stream_chat(form, self.stage.ctx.user)
        try:
            # A model may not go silent for `silence` s, nor stream past the turn's end.
            async with asyncio.timeout_at(
                min(loop.time() + silence, turn_ends_at)
            ) as deadline:
                async for chunk in stream:
                    now = loop.time()
                    # Moving the deadline costs a timer; do it once per tenth of the window,
                    # so a model is cut off after 90-100 % of `silence` without a chunk.
                    if (
                        deadline.when() - now < silence * 0.9
                        and deadline.when() < turn_ends_at
                    ):
                        deadline.reschedule(min(now + silence, turn_ends_at))
                    for payload in decoder.feed(chunk):
                        self._apply(decode_frame(payload))
                    await self.lane.emitter.update()
                    if self.filter.done:
                        break  # it began someone else's line, or copying: it ends there
                else:
                    for payload in decoder.flush():
                        self._apply(decode_frame(payload))
        except ModelCallError as exc:
            result.error = str(exc)
        except TimeoutError:
            if loop.time() >= turn_ends_at - 0.001:
                result.cut = "time"
            else:
                result.error = f"the model sent nothing for {silence:g} s"
        except asyncio.CancelledError:  # Stop: what the guards held back is shown too
            self._end()
            self.fold()
            raise
        finally:
            await stream.aclose()  # a cut reply also stops the model upstream
        self._settle()
        if result.prompt_tokens:
            chars = message_chars(messages)
            chars += tools_chars(self.briefing.profile) if offer_tools else 0
            self.stage.budget.calibrate(
                self.briefing.profile, chars, result.prompt_tokens
            )
        counted = (
            (result.prompt_tokens, result.tokens - result.prompt_tokens)
            if result.tokens
            else None
        )
        failed = (
            result.error is not None
        )  # it costs what the server counted, else nothing
        if failed and counted is None:
            counted = (0, 0)
        self._count_tokens(result.tokens, form["messages"], result.content, failed)
        reply = result.content + "".join(c.arguments for c in result.calls)
        self._count_call(counted, form["messages"], reply, started)
        return result

    def _settle(self) -> None:
        """What an ended stream amounts to: its cut, its error, its content and calls."""
        result, guards = self.result, self.filter
        if result.finish_reason == "length" and result.error is None:
            result.cut = "length"
        if guards.stopped_by is not None:
            log.debug(
                "%s began a line as %s; the reply ends there",
                self.briefing.speaker.alias,
                guards.stopped_by,
            )
        content = self._end()
        if guards.cut:  # it went on as someone else, or began copying or looping
            result.cut = guards.cut
        ended = result.finish_reason or result.done or result.cut or guards.stopped_by
        if result.error is None and not ended:
            # Closed cleanly but unfinished: a proxy or server that gave up midway.
            result.error = "the stream ended before the model finished"
        result.content = content
        ok = result.error is None and not result.cut
        result.calls = self.calls.calls() if ok else []

    async def retry(self, messages: list[dict], error: str | None) -> str:
        """One non-streamed retry for a reply that failed or came back empty."""
        p = self.briefing.speaker
        log.debug("retrying %s without streaming (%s)", p.alias, error or "empty reply")
        form = self.briefing.reply_form(messages, streamed=False)
        stage, started = self.stage, self.stage.clock.now()
        try:
            async with asyncio.timeout(stage.settings.valves.TURN_TIMEOUT):
                text, counted = await stage.gateway.complete_counted(
                    form, stage.ctx.user
                )
        except (ModelCallError, TimeoutError) as exc:
            self.lane.failure_line(p, str(exc) or error or "no reply")
            return ""
        self._count_tokens(sum(counted) if counted else None, form["messages"], text)
        self._count_call(counted, form["messages"], text, started)
        for kind, piece in self.filter.feed(text):
            self._show(kind, piece)
        said = self._end()
        if not self.fold() and not said:
            self.lane.failure_line(p, error or "the model returned an empty reply")
        return said

    def fold(self) -> bool:
        """What the guards cut (False: nothing), folded under the turn in a block titled by
        the cut's mark: the user may open it, history leaves it out."""
        guards = self.filter
        folded = guards.folded()
        if not guards.cut or not folded.strip():
            return False
        stage, cut_as = self.stage, guards.stopped_by or ""
        names = [*stage.aliases, stage.user_name, "User"]
        other = next((n for n in names if n.casefold() == cut_as.casefold()), cut_as)
        what = {
            "speaker": f"went on as {other}",
            "loop": "began repeating itself",
        }.get(guards.cut, "began repeating what was already said")
        title = f"✂️ {self.briefing.speaker.alias} {what} — not heard by the others"
        self.lane.transcript.add_notice(fold_block(title, folded, guards.cut).rstrip())
        return True

    def _count_tokens(
        self,
        reported: int | None,
        messages: list[dict],
        reply: str,
        failed: bool = False,
    ) -> None:
        """Add what a reply used: the backend's usage, else about 4 characters a token; a
        failed request the backend did not count costs nothing."""
        if not reported and self.stage.want_usage and not failed:
            chars = sum(len(_text_of(m.get("content"))) for m in messages) + len(reply)
            reported = -(-chars // 4)
        self.lane.tokens += reported or 0

    def _count_call(
        self,
        counted: tuple[int, int] | None,
        messages: list[dict],
        reply: str,
        started: float,
    ) -> None:
        seconds = self.stage.clock.now() - started
        self.stage.ledger.count(self.lane.row, counted, messages, reply, seconds)

    def _end(self) -> str:
        """Show what the guards held back, close any open reasoning; return what was said."""
        for kind, text in self.filter.flush():
            self._show(kind, text)
        self.lane.transcript.end_reasoning()
        return "".join(self.content).strip()

    def _apply(self, events: list[StreamEvent]) -> None:
        result = self.result
        for event in events:
            if event.kind == "content":
                for kind, text in self.filter.feed(event.text):
                    self._show(kind, text)
            elif event.kind == "reasoning":
                self._show("reasoning", event.text)
            elif event.kind == "tool_call":
                self.calls.add(event)
            elif event.kind == "error":
                result.error = event.text
            elif event.kind == "malformed":
                result.malformed += 1
            elif event.kind == "finish":
                result.finish_reason = event.text
            elif event.kind == "done":
                result.done = True
            elif event.kind == "usage":
                result.prompt_tokens = event.count
                result.tokens = event.index or result.tokens

    def _show(self, kind: str, text: str) -> None:
        transcript = self.lane.transcript
        if kind == "content":
            if not self.content and not text.strip():
                return  # leading whitespace of a reply stays out of the transcript
            self.content.append(text)
            transcript.add_content(text)
        elif kind == "reasoning":
            transcript.add_reasoning(text)
        elif kind == "reasoning_end":
            transcript.end_reasoning()
        self.result.shown = self.result.shown or kind != "reasoning_end"


# -- the tool loop: one turn's replies, tool calls, corrections, refits ----------------------


class ToolLoop:
    """One turn's replies: stream, run the tool calls it makes, stream again (bounded); a
    malformed call is corrected, tool results are fitted to the context, a context error
    refits once, and a reply that failed before showing anything is retried once, plainly.
    """

    def __init__(self, stage: Stage, lane: Lane, briefing: Briefing) -> None:
        self.stage = stage
        self.lane = lane
        self.briefing = briefing
        self.valves = stage.settings.valves
        self.said: list[str] = []  # what the participant said, reply by reply
        self.extra: list[dict] = []  # this turn's tool calls and results
        self.tool_rounds = 0
        self.corrections = 0
        self.refitted = False  # the one refit after a context error is used
        limit = self.valves.TURN_TIME_LIMIT
        self.ends_at = asyncio.get_running_loop().time() + limit if limit > 0 else INF
        shown, self.room, self.tools = briefing.first_fit()
        if briefing.profile.tool_specs and not self.tools and shown.messages:
            lane.notice(
                f"{md_text(briefing.speaker.alias)} answers without tools this turn: their "
                "definitions do not fit its model's context."
            )
        self._take(shown)

    def _take(self, shown: Shown) -> None:
        """Requests are built from `shown` from now on; the user hears once per model that
        their message was shortened."""
        self.base, self.sources = shown.messages, shown.sources
        model, stage = self.briefing.profile, self.stage
        if shown.shortened and model.model_id not in stage.told_shortened:
            stage.told_shortened.add(model.model_id)
            kept, size = shown.shortened
            self.lane.transcript.add_notice(
                f"*✂️ Your message was shortened for {md_text(model.name)}: {kept:,} of "
                f"{size:,} characters kept, the middle left out to fit its context "
                f"({stage.budget.limit(model):,} tokens).*"
            )

    def text(self) -> str:
        return "\n\n".join(s for s in self.said if s)

    async def run(self) -> str:
        """The turn's replies until it has said its piece; returns what it said."""
        p, valves = self.briefing.speaker, self.valves
        while True:
            if self.base is None:
                why = "its model's context cannot hold even its instructions and the latest message"
                return self._bench(why)
            messages = self.base + self.extra
            if self.room is not None and self.extra:
                messages = fit_tool_results(messages, len(self.base), self.room)
            offer = self.tools and self.tool_rounds < valves.MAX_TOOL_ROUNDS
            offer = offer and self.corrections <= valves.MAX_TOOL_CORRECTIONS
            reply = ReplyStream(self.stage, self.lane, self.briefing, self.sources)
            result = await reply.stream(messages, offer, self.ends_at)
            self.said.append(result.content)
            if result.cut:
                if not reply.fold():  # a guard's cut is marked by its fold
                    self._cut_line(result.cut)
                return self.text()
            if result.malformed:
                self.lane.notice(
                    f"{md_text(p.alias)}'s reply had {result.malformed} unreadable stream "
                    "frame(s), skipped: some of its text may be missing."
                )
            if is_context_error(result.error) and not result.shown:
                if self.refitted:  # a plain retry would fail the same way: it sits out
                    why = f"the conversation does not fit its model's context ({result.error})"
                    return self._bench(why)
                self._refit(result.error or "", messages)
                continue
            if result.error is not None or not (result.content or result.calls):
                return await self._recover(result, messages)
            if not result.calls:
                return self.text()
            if self.tool_rounds >= valves.MAX_TOOL_ROUNDS:
                # Tools were no longer offered and it called one anyway: nothing more runs.
                self.lane.notice(
                    f"{md_text(p.alias)} still asked for tools after "
                    f"{_count(self.tool_rounds, 'tool round')}; its turn ends here."
                )
                return self.text()
            await self._answer_calls(result)

    async def _recover(self, result: StreamResult, messages: list[dict]) -> str:
        """A reply that failed or said nothing: retried once, plainly, if nothing was shown
        yet; otherwise one line says why it ended."""
        if not result.shown and not result.calls:
            reply = ReplyStream(self.stage, self.lane, self.briefing, self.sources)
            self.said.append(await reply.retry(messages, result.error))
        else:
            error = result.error or "the reply ended early"
            self.lane.failure_line(self.briefing.speaker, error)
        return self.text()

    def _refit(self, error: str, sent: list[dict]) -> None:
        """Fit tighter for a second try after a context error: to the size the server named
        (learnt for every run), else `retry_chars` (this request only).
        """
        self.refitted = True
        briefing, profile = self.briefing, self.briefing.profile
        budget, room = self.stage.budget, None
        if budget.learn(profile, error):
            room = briefing.room(0.9)
        if room is None:
            room = budget.retry_chars(
                profile, message_chars(sent), tools_chars(profile)
            )
        self.room = room
        # The tool results are cut to what is left; they may take at most half.
        extra = min(message_chars(self.extra), room // 2) if self.extra else 0
        self._take(briefing.shown(room - extra))

    def _bench(self, reason: str) -> str:
        """It cannot take part with this conversation: one line, and no more requests to it."""
        p = self.briefing.speaker
        log.debug(
            "%s (%s) sits out: %s", p.alias, self.briefing.profile.model_id, reason
        )
        self.stage.benched.add(p.alias)
        self.lane.failure_line(p, reason, "; it sits out the rest of this conversation")
        return self.text()

    def _cut_line(self, cut: str) -> None:
        """A visible mark that a reply was cut short; history leaves it out like a notice."""
        max_tokens = self.briefing.max_tokens
        if cut == "speaker":
            why = "cut: it went on as someone else"
        elif cut == "loop":
            why = "cut: it began repeating itself"
        elif cut == "echo":
            why = "cut: it began repeating what was already said"
        elif cut == "time":
            why = f"cut after {self.valves.TURN_TIME_LIMIT:g} s"
        elif max_tokens:
            why = f"cut at {max_tokens} tokens"
        else:
            why = "cut by the model's length limit"
        self.lane.transcript.add_notice(f"*✂️ …({why})*")

    async def _answer_calls(self, result: StreamResult) -> None:
        """Malformed calls are sent back for a correction (bounded); the others run, and
        their results join the next request."""
        profile = self.briefing.profile
        bad = {
            c.index: why for c in result.calls if (why := malformed_call(profile, c))
        }
        if bad and self.corrections < self.valves.MAX_TOOL_CORRECTIONS:
            self.corrections += 1
            alias = self.briefing.speaker.alias
            log.debug("malformed tool call from %s, asking again: %s", alias, bad)
            outputs = {i: correction(profile, why) for i, why in bad.items()}
            self.extra += tool_messages(result, outputs)
            return
        self.tool_rounds += 1
        outputs = await self.run_tools(result.calls, bad)
        self.extra += tool_messages(result, outputs)

    async def run_tools(
        self, calls: list[ToolCall], bad: dict[int, str]
    ) -> dict[int, str]:
        """Run the calls one by one, each shown as executing, then done with its result."""
        transcript, emitter = self.lane.transcript, self.lane.emitter
        transcript.show_running_tools(calls)
        await emitter.update()
        outputs: dict[int, str] = {}
        limit = self.valves.TOOL_RESULT_MAX_CHARS
        for call in calls:
            if call.index in bad:
                text, files, embeds = f"Error: {bad[call.index]}", [], []
            else:
                text, files, embeds = await self.run_tool(call)
            outputs[call.index] = _clip(text, limit)
            # The block is re-sent in every frame that follows: show less than the model gets.
            shown = _clip(text, limit // 5)
            transcript.finish_tool(call, tool_block(call, shown, files, embeds))
            await emitter.update()
        transcript.clear_running_tools()
        await emitter.update()
        return outputs

    async def run_tool(self, call: ToolCall) -> tuple[str, list, list]:
        tool = self.briefing.profile.tools[call.name]
        args = json.loads(call.arguments or "{}")
        if tool.get("type") != "mcp":
            spec = tool.get("spec") or {}
            allowed = (spec.get("parameters") or {}).get("properties")
            if isinstance(allowed, dict):
                args = {k: v for k, v in args.items() if k in allowed}
        stage, seconds = self.stage, self.valves.TOOL_TIMEOUT
        try:
            result = await within(
                stage.clock, seconds, call_tool(tool["callable"], args)
            )
        except TimeoutError:
            result = f"Error: the tool did not finish within {seconds:g} s."
        except (
            Exception
        ) as exc:  # a tool's own failure is the model's to read, not a crash
            log.debug("tool %s raised: %s", call.name, exc)
            result = {"error": str(exc)}
        try:
            return await stage.gateway.process_tool_result(
                call.name,
                result,
                str(tool.get("type") or ""),
                stage.ctx.metadata,
                stage.ctx.user,
            )
        except Exception as exc:
            log.warning("could not process the result of tool %s: %s", call.name, exc)
            return str(result), [], []


INF = float("inf")


def malformed_call(profile: ModelProfile, call: ToolCall) -> str | None:
    """Why a tool call cannot run (None: it can)."""
    if call.name not in profile.tools:
        return f"there is no tool named '{call.name}'"
    try:
        args = json.loads(call.arguments or "{}")
    except json.JSONDecodeError as exc:
        return f"the arguments are not valid JSON ({exc.msg})"
    if not isinstance(args, dict):
        return "the arguments must be a JSON object"
    return None


def correction(profile: ModelProfile, why: str) -> str:
    names = ", ".join(sorted(profile.tools)) or "none"
    return (
        f"Error: that tool call was not run because {why}. Available tools: {names}. "
        "Call a tool again with a valid name and JSON object arguments, or answer without it."
    )


def tool_messages(result: StreamResult, outputs: dict[int, str]) -> list[dict]:
    """The assistant's tool calls and each call's result, as the next request carries them."""
    return [
        {
            "role": "assistant",
            "content": result.content,
            "tool_calls": [c.as_message_part() for c in result.calls],
        },
        *(
            {
                "role": "tool",
                "tool_call_id": c.call_id,
                "content": outputs.get(c.index, ""),
            }
            for c in result.calls
        ),
    ]


# -- the turns: one in the run's lane, or a council round's in lanes of their own ------------


class TurnStreamer:
    """Speaks the turns the direction plans: one at a time in the run's lane, or a council
    round's at once, each in a lane of its own. Keeps the conversation's turns, which every
    request is built from."""

    def __init__(
        self,
        gateway: HostGateway,
        ctx: RequestContext,
        settings: Settings,
        transcript: Transcript,
        emitter: CoalescingEmitter,
        clock: Clock,
        budget: ContextBudget,
        *,
        profiles: dict[str, ModelProfile],
        aliases: list[str],
        user_name: str,
        turns: list[Turn],
        chat_system: str = "",
        want_usage: bool = False,
        may_say: Iterable[str] = (),
        closing_alias: str = "",
    ) -> None:
        self.stage = Stage(
            gateway,
            ctx,
            settings,
            clock,
            budget,
            profiles,
            aliases,
            user_name,
            chat_system,
            want_usage,
            may_say,
            closing_alias,
        )
        self.lane = Lane(transcript, emitter, turns)
        self.emitter = emitter

    # What the run and its direction read.
    settings = property(lambda self: self.stage.settings)
    budget = property(lambda self: self.stage.budget)
    ledger = property(lambda self: self.stage.ledger)
    aliases = property(lambda self: self.stage.aliases)
    user_name = property(lambda self: self.stage.user_name)
    transcript = property(lambda self: self.lane.transcript)
    turns = property(lambda self: self.lane.turns)
    tokens = property(lambda self: self.lane.tokens)
    speaking = property(lambda self: self.lane.speaking)

    async def turn(self, plan: TurnPlan) -> Heard:
        """Speak one planned turn in the run's lane."""
        return await self.speak(self.lane, plan)

    async def speak(self, lane: Lane, plan: TurnPlan) -> Heard:
        """Speak one planned turn; what was said joins the lane's turns (a PASS shows as one
        line)."""
        p, stage = plan.speaker, self.stage
        if p.alias in stage.benched:
            return Heard(
                "", benched=True
            )  # it said it sits out: no more requests to it
        profile = stage.profiles[p.model_id]
        log.debug("%s: %s (%s)", plan.kind, p.alias, p.model_id)
        lane.speaking = True
        lane.row = stage.ledger.row(
            p.alias + ROW_KINDS.get(plan.kind, ""), profile.name
        )
        transcript = lane.transcript
        mark = transcript.checkpoint()
        model = profile.name if stage.settings.valves.SHOW_MODELS else ""
        transcript.start_turn(p, model, TURN_LABELS.get(plan.kind, ""))
        if plan.why and stage.settings.show_manager_reason:
            transcript.add_block(manager_block(plan.why))
        self._tools_notice(lane, p, profile)
        await lane.emitter.update()
        seen = lane.turns[
            : len(lane.turns) - plan.hides
        ]  # a reviewer sees no named answers
        said = await ToolLoop(stage, lane, Briefing(stage, plan, profile, seen)).run()
        transcript.close_live()
        passed = plan.pass_allowed and is_pass(said)
        if passed:  # one line instead of the turn; what a guard cut stays, folded
            folded = folds_in(transcript.render()[mark:])
            transcript.rewind(mark)
            transcript.add_notice(f"*⏭️ {md_text(p.alias)} passed.*")
            for block in folded:
                transcript.add_notice(block)
        elif said:
            lane.turns.append(Turn(p.alias, said))
            lane.row.turns += 1  # a turn said, as the status counts it (not a PASS)
        lane.speaking = False
        await lane.emitter.update()
        return Heard(said, passed, benched=p.alias in stage.benched)

    async def together(self, plans: list[TurnPlan]) -> list[Heard]:
        """Several turns generated at once, none seeing the others, shown one after another:
        the first streams live; each next appears at once as far as it has got, then streams.

        So the round takes as long as its slowest turn, and every frame is still an append.
        """
        main = self.lane
        after = main.transcript.has_text()
        lanes = [
            main.aside(
                Transcript(self.stage.clock.now, continues=after or i > 0),
                LaneEmitter(self.emitter),
            )
            for i in range(len(plans))
        ]
        tasks = [
            asyncio.ensure_future(self.speak(lane, plan))
            for lane, plan in zip(lanes, plans, strict=True)
        ]
        heard: list[Heard] = []
        main.speaking = True
        try:
            for lane, task in zip(lanes, tasks, strict=True):
                main.transcript.show_lane(lane.transcript)
                assert isinstance(lane.emitter, LaneEmitter)
                lane.emitter.shown = True
                await self.emitter.update()
                heard.append(await task)
        finally:
            for task in tasks:
                task.cancel()  # Stop: the turns not shown yet are dropped
            main.transcript.show_lane(
                None
            )  # what was shown stays (and says it was stopped)
        main.speaking = False
        for lane, plan, result in zip(lanes, plans, heard, strict=True):
            main.tokens += lane.tokens
            if result.said and not result.passed:
                main.turns.append(Turn(plan.speaker.alias, result.said))
        await self.emitter.update()
        return heard

    async def user_words(self, text: str) -> Heard:
        """The user's words between rounds: shown under their name, heard by everyone after."""
        self.lane.transcript.add_user_words(self.stage.user_name, text)
        self.lane.turns.append(Turn(None, text, between_rounds=True))
        await self.emitter.update()
        return Heard(text)

    async def ask(
        self,
        profile: ModelProfile,
        messages: list[dict],
        max_tokens: int,
        seconds: float,
    ) -> str:
        """One plain completion (the manager's), bounded in tokens and time."""
        stage = self.stage
        bound = {"max_tokens": max_tokens} if max_tokens else {}
        form = request_form(stage.budget, profile, messages, **bound)
        row, started = stage.ledger.row(MANAGER_ROW, profile.name), stage.clock.now()
        asked = stage.gateway.complete_counted(form, stage.ctx.user)
        text, counted = await within(stage.clock, seconds, asked)
        row.turns += 1
        stage.ledger.count(
            row, counted, form["messages"], text, stage.clock.now() - started
        )
        return text

    def _tools_notice(self, lane: Lane, p: Participant, profile: ModelProfile) -> None:
        """Once per participant: the user picked tools its model cannot call."""
        told = self.stage.told_no_tools
        if (
            profile.user_picked_tools
            and not profile.native_tools
            and p.alias not in told
        ):
            told.add(p.alias)
            lane.transcript.add_notice(
                f"*🛠️ Tools are unavailable for {md_text(p.alias)}: its model "
                "does not use native function calling.*"
            )


def make_manager(
    streamer: TurnStreamer, profile: ModelProfile, status: Callable[..., None]
) -> ManagerChoice:
    """The manager as a speaker policy: asked through the streamer, fed the conversation."""
    settings, valves = streamer.settings, streamer.settings.valves
    aliases = streamer.aliases

    def prompt(last: int | None) -> str:
        limit = valves.MANAGER_HISTORY_CHARS
        room = streamer.budget.room_chars(profile, 4 * MANAGER_ANSWER_TOKENS, 1.0)
        if (
            room is not None
        ):  # the prompt's own words and the system message need room too
            limit = max(0, min(limit, room - len(settings.manager_prompt) - 2000))
        history = history_digest(streamer.turns, streamer.user_name, limit)
        return manager_prompt(settings.manager_prompt, history, aliases, last)

    async def ask(messages: list[dict], max_tokens: int) -> str:
        return await streamer.ask(profile, messages, max_tokens, valves.MANAGER_TIMEOUT)

    return ManagerChoice(
        ask,
        prompt,
        settings.manager_system,
        aliases,
        status,
        valves.MAX_TOKENS,
        wording=manager_wording(settings.manager_prompt),
    )


# ============================================================================
# Run: one request's conversation, told as a story
# ============================================================================


class Run:
    """The direction names each turn and the streamer speaks it, until an ending holds; then
    the closing. Also the status line that tells the user how it went."""

    def __init__(
        self, transcript: Transcript, emitter: CoalescingEmitter, clock: Clock
    ) -> None:
        self.transcript = transcript
        self.emitter = emitter
        self.clock = clock
        self.direction: Direction | None = None  # both set once the setup is done
        self.streamer: TurnStreamer | None = None
        self.started: float | None = (
            None  # when the turns began (after the setup dialog)
        )
        self.ended: float | None = None  # when the closing ended (the usage's figures)
        self.in_turn = False  # a conversation turn (not the closing) is streaming
        self.waited = 0.0  # seconds the user's tab was asked and not yet answered
        self._waited_before = (
            0.0  # ... of them before the turns began (the setup dialog)
        )
        # Reviews, closing turns and votes said, by kind.
        self.closing_said: dict[str, int] = {}
        # Continue Response: the message's turns before this part. The host keeps that part
        # as it was (its usage block too) and appends this one, whose seconds alone are known.
        self.earlier = 0

    async def converse(self, direction: Direction, streamer: TurnStreamer) -> str:
        """Turns until an ending holds, then the closing; returns why it ended."""
        self.direction, self.streamer, self.started = (
            direction,
            streamer,
            self.clock.now(),
        )
        while plans := await direction.next_turns():
            self.in_turn = True
            for plan, heard in zip(plans, await self.speak(plans), strict=True):
                direction.heard(plan, heard, streamer.tokens)
            self.in_turn = False
        if direction.explains:
            self.status(f"Conversation ended: {direction.reason}.")
        closing = direction.closing()
        while (step := closing.next()) is not None:
            line, plans = step
            if line:
                self.transcript.add_notice(line)
            if plans:
                closing.heard(plans, await self.speak(plans))
        for plan, heard in closing.spoken:
            if heard.said and not heard.passed:
                self.closing_said[plan.kind] = self.closing_said.get(plan.kind, 0) + 1
        for line in (closing.verdict(), direction.end_line()):
            if line:
                self.transcript.add_notice(line)
        self.ended = self.clock.now()
        if streamer.settings.valves.SHOW_USAGE and streamer.ledger.rows:
            usage = usage_block(streamer.ledger, self.talked(), part=self.earlier > 0)
            self.transcript.add_block(usage)
        await self.emitter.update()
        return direction.reason

    async def speak(self, plans: list[TurnPlan]) -> list[Heard]:
        """The planned turns spoken: a council round's or the reviews at once, others in turn."""
        assert self.streamer is not None and self.direction is not None
        if plans[0].kind == "words":
            return [await self.streamer.user_words(plans[0].ask)]
        if len(plans) > 1 and plans[0].kind in ("turn", "review"):
            self.status(self.direction.where(plans), done=False)
            return await self.streamer.together(plans)
        heard = []
        for plan in plans:
            self.status(self.direction.where([plan]), done=False)
            heard.append(await self.streamer.turn(plan))
        return heard

    # -- the status line ---------------------------------------------------------------------
    def status(self, text: str, done: bool = True) -> None:
        log.debug("status: %s", text)
        self.emitter.post(
            {"type": "status", "data": {"description": text, "done": done}}
        )

    def end_status(self, outcome: str | None = None) -> None:
        """The last status line: "3 participants, 6 turns, 42 s", then how it ended if not by
        its rounds ("· stopped"); it replaces whatever the manager last said.

        Its turns are the end line's (and the usage total's, with the closing turns named
        after them), its seconds the usage's; time the user's tab was asked comes apart:
        "…, 13 s talking, 2 min waiting for you"."""
        direction = self.direction
        if self.started is None or direction is None:
            return  # no turn began: the message says what happened
        outcome = direction.outcome if outcome is None else outcome
        progress = direction.progress
        turns = [_count(progress.spoken + (1 if self.in_turn else 0), "turn")]
        if progress.passes:
            turns.append(f"{progress.passes} passed")
        for kind, noun in (("review", "review"), ("closing", "closing turn")):
            if self.closing_said.get(kind):
                turns.append(_count(self.closing_said[kind], noun))
        if self.closing_said.get("vote"):
            turns.append(_count(self.closing_said["vote"], "vote"))
        count = _count(len(direction.participants), "participant")
        if self.earlier:  # "2 participants, 4 turns; this part: 2 turns, 7 s"
            part = progress.spoken + (1 if self.in_turn else 0) - self.earlier
            turns[0] += f"; this part: {_count(part, 'turn')}"
        text = f"{count}, {', '.join(turns)}, {duration(self.talked())}"
        if round(self.waited) >= 1:
            text += f" talking, {duration(self.waited)} waiting for you"
        self.status(f"{text} · {outcome}" if outcome else text)

    def talked(self) -> float:
        """Seconds since the turns began, up to the end of the closing (now, if it did not
        end), less the time the user's tab was asked meanwhile."""
        if self.started is None:
            return 0.0
        end = self.ended if self.ended is not None else self.clock.now()
        return max(0.0, end - self.started - (self.waited - self._waited_before))

    def waiting_on(self, call: Callable[[dict], Awaitable[Any]]) -> EventCall:
        """`call` (the user's tab), timed as waiting for the user; a prompt that waits for an
        answer says so in the status."""

        async def asked(event: dict) -> Any:
            title = (event.get("data") or {}).get("title")
            if event.get("type") == "input" and title:
                self.status(f"Waiting for you · {title}", done=False)
            began = self.clock.now()
            try:
                return await call(event)
            finally:
                self.waited += self.clock.now() - began
                if self.started is None:
                    self._waited_before += self.clock.now() - began

        return asked

    def not_started(self, exc: Exception) -> None:
        """The status after a setup that cannot run (the message says what to fix); a
        cancelled setup's own line says it all."""
        if isinstance(exc, AccessCheckError):
            self.status("Not started: the access check failed")
        elif isinstance(exc, ConfigError):
            self.status("Not started: the setup needs fixing")

    def stopped(self) -> None:
        """The user pressed Stop: the turn being spoken says so, and so does the status."""
        if self.streamer is not None and self.streamer.speaking:
            self.transcript.close_live()
            self.transcript.add_notice(STOPPED_LINE)
        self.end_status("stopped")


# ============================================================================
# Background tasks: title, tags and follow-ups from the admin's task model
# ============================================================================

# The JSON each task must answer: its key and whether it holds a list of strings.
TASK_SHAPES = {
    "title_generation": ("title", False),
    "tags_generation": ("tags", True),
    "follow_up_generation": ("follow_ups", True),
}
TASK_VALUE_MAX_CHARS = {"title": 100, "tags": 40, "follow_ups": 400}


def task_answer(task: str, text: str, prompt: str) -> str:
    """The answer to give the host: clean JSON of the shape the task asks for, or ''.

    A model that answers prose, a heading or the prompt's own placeholder ("your concise
    title here") gives '', so the host keeps its fallback (the user's message as title).
    Tasks of other kinds get the text as it is.
    """
    if task not in TASK_SHAPES:
        return text
    key, is_list = TASK_SHAPES[task]
    try:
        data = json.loads(text[text.find("{") : text.rfind("}") + 1])
    except ValueError:
        return ""
    value = data.get(key) if isinstance(data, dict) else None
    values = value if is_list and isinstance(value, list) else [value]
    limit = TASK_VALUE_MAX_CHARS[key]
    quoted = prompt.split("<chat_history>")[
        0
    ].casefold()  # the instructions, not the chat
    kept = [
        v.strip()
        for v in values
        if isinstance(v, str)
        and v.strip()
        and len(v.strip()) <= limit
        and "\n" not in v.strip()
        and not HEADING_RE.match(v.strip())
        and f'"{v.strip().casefold()}"' not in quoted  # the prompt's own example
    ]
    if not kept:
        return ""
    return json.dumps({key: kept if is_list else kept[0]}, ensure_ascii=False)


def _text_of_messages(messages: list[dict]) -> str:
    return "\n".join(_text_of(m.get("content")) for m in messages)


async def _task_models(gateway: HostGateway) -> list[str]:
    """The admin's task models (external, then local), those that are set."""
    try:
        external, local = await gateway.task_models()
    except Exception as exc:
        log.warning("could not read the task model setting: %s", exc)
        return []
    return [m for m in (external, local) if m]


async def _first_usable(
    gateway: HostGateway,
    ctx: RequestContext,
    runtime: dict[str, dict],
    candidates: list[str],
    own_prefix: str,
) -> ModelProfile:
    """The first candidate that exists, is not this pipe and the user may use."""
    for model_id in dict.fromkeys(candidates):
        try:
            _refuse_self([model_id], own_prefix)
            profiles = await resolve_profiles(
                gateway, ctx, runtime, [model_id], with_tools=False
            )
        except ConfigError as exc:
            log.debug("task model %s not used: %s", model_id, exc)
            continue
        return profiles[model_id]
    raise ConfigError("no model can answer the background task")


TASK_MAX_TOKENS = 400  # a title, tags or a few follow-up questions never need more
# The JSON of a title, tags or follow-ups fits in this; a model that did not answer it before
# gets no room to ramble again, and a third of the time.
TASK_RETRY_TOKENS = 120
TASK_RETRY_TIME_SHARE = 1 / 3


class TaskBudget:
    """A task model that did not give the JSON asked for (prose, or too slow) gets a short
    budget for its next tasks, so the message it keeps busy ends sooner; one good answer
    gives it the full budget back. Its record is shared by every request, like context sizes.
    """

    def __init__(self, failures: dict[str, int]) -> None:
        self.failures = failures

    def limits(
        self, model_id: str, max_tokens: int, seconds: float
    ) -> tuple[int, float]:
        """(max tokens, seconds) for this model's next task."""
        if not self.failures.get(model_id):
            return max_tokens, seconds
        return min(max_tokens, TASK_RETRY_TOKENS), seconds * TASK_RETRY_TIME_SHARE

    def record(self, model_id: str, answered: bool) -> None:
        if answered:
            self.failures.pop(model_id, None)
        else:
            self.failures[model_id] = self.failures.get(model_id, 0) + 1


def fit_task_prompt(messages: list[dict], room: int | None) -> list[dict]:
    """The task's messages within `room` characters, the middle of the quoted chat left out.

    The host quotes the whole conversation in one prompt; its instructions, the chat's start
    and its latest lines stay. `room` None: the model's context is unknown, nothing is cut.
    """
    excess = message_chars(messages) - room if room is not None else 0
    if excess <= 0 or not messages:
        return messages
    text = _text_of(messages[-1].get("content"))
    start = text.find("<chat_history>")
    start = start + len("<chat_history>") if start >= 0 else 0
    end = text.rfind("</chat_history>")
    end = end if end >= start else len(text)
    block = text[start:end]
    kept = cut_middle(block, max(len(CUT_MARK), len(block) - excess))
    return [
        *messages[:-1],
        {**messages[-1], "content": text[:start] + kept + text[end:]},
    ]


async def ask_task_model(
    gateway: HostGateway,
    user: Any,
    profile: ModelProfile,
    budget: ContextBudget,
    messages: list[dict],
    max_tokens: int,
) -> str:
    """One plain completion fitted to the model's context; a context-length error refits once.

    The answer may take a quarter of the context (some servers refuse prompt + max_tokens
    over it); the quoted chat needs the room more than a title does.
    """
    cap: int | None = None  # after an error that named no size: less than was sent
    for shrink in (1.0, 0.9):
        reserve = min(max_tokens, budget.limit(profile) // 4 or max_tokens)
        room = budget.room_chars(profile, reserve, shrink)
        fitted = fit_task_prompt(
            messages, room if cap is None else min(room or cap, cap)
        )
        form = {"model": profile.model_id, "messages": fitted, "max_tokens": reserve}
        form = for_backend(form, profile, budget.num_ctx(profile))
        try:
            return await gateway.complete(form, user)
        except ModelCallError as exc:
            if shrink < 1.0 or not is_context_error(str(exc)):
                raise
            if not budget.learn(profile, str(exc)):
                cap = budget.retry_chars(profile, message_chars(fitted))
            log.debug("task prompt did not fit %s: %s", profile.model_id, exc)
    raise AssertionError("unreachable")


# ============================================================================
# Configuration overlay: a dialog opened in the user's browser through __event_call__
# ============================================================================


def overlay_script(
    defaults: dict,
    own_prefix: str,
    timeout_s: float,
    max_rounds: int,
    max_tokens: int = 0,
    message_id: str | None = None,
    settings: dict | None = None,
    problem: str = "",
    saved: bool = False,
) -> str:
    """The overlay's code with its inputs as JSON literals (never spliced in as raw text).

    `defaults` fill the form, `settings` (the user's valves) are what preset "None" restores,
    `problem` is the server's refusal of the answer the form shows again; `saved`: the chat
    has a setup, which "Use defaults" would replace (it asks first).
    One pass over the template: a placeholder's name inside a value is left as it is.
    """
    values = {
        "DEFAULTS": defaults,
        "SETTINGS": settings if settings is not None else defaults,
        "PROBLEM": problem,
        "LIMITS": DIALOG_LIMITS,
        "RESOLVED_KEY": RESOLVED_KEY,
        "OWN_PREFIX": own_prefix,
        "TIMEOUT_MS": int(timeout_s * 1000),
        "OPEN_MS": int(max(timeout_s, DIALOG_MAX_OPEN) * 1000),
        "MAX_ROUNDS": int(max_rounds),
        "PRESETS": PRESETS,
        "MAX_TOKENS": int(max_tokens),
        "MARKS": list(zip(COLOUR_MARKS, MARK_COLOURS, strict=True)),
        "MESSAGE_ID": message_id,
        "CLOSE_EVENT": OVERLAY_CLOSE_EVENT,
        "SAVED": saved,
    }
    return re.sub(
        r"__([A-Z_]+)__", lambda m: _js_literal(values[m.group(1)]), OVERLAY_JS
    )


def overlay_close_script(message_id: str | None) -> str:
    """Code that closes the dialog of that message in the tab (the request ended without it)."""
    return (
        f"window.dispatchEvent(new CustomEvent({_js_literal(OVERLAY_CLOSE_EVENT)}, "
        f"{{ detail: {_js_literal(message_id)} }}));"
    )


def _js_literal(value: Any) -> str:
    return json.dumps(value).replace("</", "<\\/")


OVERLAY_CLOSE_EVENT = "mmc-setup-close"
# The dialog's answer to Cancel, Escape or a click outside it.
OVERLAY_CANCELLED = "cancelled"
# Its answer when nobody typed or clicked in it for OVERLAY_TIMEOUT seconds.
OVERLAY_TIMED_OUT = "timed_out"
DIALOG_MAX_OPEN = 3600.0  # seconds a dialog stays open however busy; then it times out
MAX_DIALOG_ASKS = 5  # a refused answer re-opens the dialog this many times at most
# The server's limits, mirrored in the form so it refuses what the server would, by the field.
DIALOG_LIMITS = {
    "participants": MAX_PARTICIPANTS,
    "alias": MAX_ALIAS_CHARS,
    "persona": MAX_PERSONA_CHARS,
    "stop_phrase": MAX_STOP_PHRASE_CHARS,
    "max_seconds": 86_400,
    "max_total_tokens": 100_000_000,
    "max_tokens": 1_000_000,
}
SETUP_CANCELLED = f"{NOTICE_PREFIX}Setup cancelled. Send a message to open it again.*"
SETUP_KEPT = (
    f"{NOTICE_PREFIX}Setup unchanged: this chat keeps its saved setup, and your next message "
    f"runs it. Send {RECONFIGURE_COMMAND} to choose again.*"
)
STOPPED_IN_SETUP = f"{NOTICE_PREFIX}Stopped before the conversation began.*"


class SetupCancelled(Exception):
    """The user closed the setup dialog without an answer: nothing runs."""


class SetupKept(SetupCancelled):
    """/reconfigure was cancelled: the chat keeps the setup saved for it."""


class NothingToAnswer(SetupCancelled):
    """A setup chosen by /reconfigure in a chat with no message yet: nothing to talk about."""


class _TimedOut:
    """The dialog's answer when it timed out or failed: the user's valves run, unremembered."""

    def __repr__(self) -> str:
        return "TIMED_OUT"


TIMED_OUT = _TimedOut()


class SetupDialog:
    """Asks the user's tab for a setup, and closes the dialog if the request stops first.

    The tab awaits the dialog inside its event handler; a request stopped meanwhile would
    leave it open, so an `execute` event queued before the final content closes it.
    """

    def __init__(
        self,
        call: Callable[[dict], Awaitable[Any]],
        emitter: CoalescingEmitter,
        message_id: str | None,
        clock: Clock,
        timeout: float,
    ) -> None:
        self._call = call
        self._emitter = emitter
        self._message_id = message_id
        self._clock = clock
        self._timeout = timeout

    async def ask(self, script: str) -> Any:
        """The dialog's answer: a setup, None for "Use defaults", TIMED_OUT if it timed out or
        failed. Raises SetupCancelled for Cancel, Escape or a click outside it.
        """
        try:
            # The dialog closes itself (after a quiet OVERLAY_TIMEOUT, or DIALOG_MAX_OPEN); the
            # slack covers a slow network.
            answer = await within(
                self._clock,
                max(self._timeout, DIALOG_MAX_OPEN) + 5,
                self._call({"type": "execute", "data": {"code": script}}),
            )
        except asyncio.CancelledError:
            code = overlay_close_script(self._message_id)
            self._emitter.post({"type": "execute", "data": {"code": code}})
            raise
        except TimeoutError:
            log.debug("configuration overlay timed out; using the user valves")
            return TIMED_OUT
        except Exception as exc:
            log.warning("configuration overlay failed (%s); using the user valves", exc)
            return TIMED_OUT
        if isinstance(answer, dict) and answer.get(OVERLAY_CANCELLED) is True:
            raise SetupCancelled
        if isinstance(answer, dict) and answer.get(OVERLAY_TIMED_OUT) is True:
            log.debug(
                "configuration overlay timed out in the tab; using the user valves"
            )
            return TIMED_OUT
        if isinstance(answer, dict) and set(answer) <= {"error", "detail"}:
            return TIMED_OUT  # the host's answer for a closed tab or an error
        return answer


def dialog_form(raw: Any, max_rounds: int) -> dict:
    """A setup as the dialog shows it: every value resolved when it is valid, else as given
    (with its preset's values where it names one), so nothing typed is lost."""
    if not isinstance(raw, dict):
        return {"rounds": 1, "participants": []}
    try:
        return {**parse_config(raw, max_rounds).model_dump(), RESOLVED_KEY: True}
    except ConfigError:
        pass
    try:
        return raw if raw.get(RESOLVED_KEY) is True else apply_preset(raw)
    except (ConfigError, RecursionError):
        return raw


async def ask_for_setup(
    dialog: SetupDialog,
    script: Callable[[dict, str], str],
    opening: dict,
    settings: dict,
    max_rounds: int,
) -> tuple[ConversationConfig, bool]:
    """The dialog's setup and whether to remember it. A refused answer opens the dialog again
    with what was typed and why; a timed-out dialog runs the user's valves, unremembered.
    """
    shown, problem = opening, ""
    for _ in range(MAX_DIALOG_ASKS):
        answer = await dialog.ask(script(shown, problem))
        if answer is TIMED_OUT:
            return parse_config(settings, max_rounds), False
        raw = settings if answer in (None, "") else answer
        try:
            return parse_config(raw, max_rounds), True
        except ConfigError as exc:
            log.debug("setup refused, asking again: %s", exc)
            shown, problem = (raw if isinstance(raw, dict) else shown), str(exc)
    raise ConfigError(problem)


# ============================================================================
# Request plumbing: the helpers Pipe uses, in the order a request meets them
# ============================================================================


def _tool_event_filter(emit: EmitFn | None) -> EmitFn | None:
    """Tools may report status or files, but content events would fight our transcript."""
    if emit is None:
        return None

    async def forward(event: dict) -> Any:
        if isinstance(event, dict) and event.get("type") in (
            "message",
            "replace",
            "chat:message",
        ):
            log.debug("dropped a %s event from a tool", event.get("type"))
            return None
        return await emit(event)

    return forward


def _chat_bytes(body: dict) -> int:
    """Rough size of what the host rewrites besides our message: the chat's earlier messages,
    which it keeps twice (the history tree and the message list)."""
    messages = body.get("messages") or []
    return 2 * sum(len(_text_of(m.get("content"))) + 200 for m in messages)


def continued_content(body: dict, metadata: dict) -> str:
    """The message Open WebUI's Continue Response asks to go on ('' for any other request): the
    host names it as `assistant_message_id` and sends it as the last message, and it appends
    what the pipe returns to it."""
    messages = body.get("messages") or []
    if not metadata.get("assistant_message_id") or not messages:
        return ""
    last = messages[-1]
    return _text_of(last.get("content")) if last.get("role") == "assistant" else ""


def one_more_round(config: ConversationConfig) -> ConversationConfig:
    """What Continue means for a conversation: one more round of its participants, in its order,
    without closing it again (the closing turn or vote already spoke), nor a council's peer
    review (the closing steps follow the config: with neither, the round is all there is).
    """
    return config.model_copy(
        update={"rounds": 1, "closing": None, "peer_review": False}
    )


def earlier_turns(content: str, participants: list[Participant]) -> int:
    """The participants' turns in a message (not passes, the closing, or votes), as its status
    counted them."""
    aliases = {p.alias for p in participants}
    names = [m.group(2) for m in HEADING_RE.finditer(BLOCK_RE.sub("", content))]
    return sum(
        1 for name in names if md_unescape(_MODEL_BEHIND_RE.sub("", name)) in aliases
    )


def _chat_system(body: dict) -> str:
    """The chat's own system prompt (the user's, in the chat's settings), if any."""
    messages = body.get("messages") or []
    return "\n\n".join(
        _text_of(m.get("content")) for m in messages if m.get("role") == "system"
    )


def _saved_chat_id(ctx: RequestContext) -> str | None:
    """The chat id when the chat is stored on the server (not a temporary or channel chat)."""
    chat_id = str(ctx.metadata.get("chat_id") or "")
    return (
        chat_id if chat_id and not chat_id.startswith(("local:", "channel:")) else None
    )


def _last_user_text(body: dict) -> str:
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def is_command(content: Any) -> bool:
    """A message that talks to the pipe (/reconfigure), not to the participants."""
    return _text_of(content).strip().lower() == RECONFIGURE_COMMAND


def conversation_messages(messages: list[dict]) -> list[dict]:
    """The chat without its commands: the conversation goes on from the last real message."""
    return [
        m
        for m in messages
        if not (m.get("role") == "user" and is_command(m.get("content")))
    ]


SETUP_SAVED = f"{NOTICE_PREFIX}Setup saved. Send a message to start the conversation.*"


_RECONFIGURE_HINT = f"(This is the configuration saved for this chat: send {RECONFIGURE_COMMAND} to choose again.)"


def _model_roles(
    config: ConversationConfig, manager_id: str | None, closer: Participant | None
) -> dict[str, str]:
    """Every model a run needs (closing too: the same setup and access check), in order, with
    where it is used as the dialog names it: "Participant 2, Manager model"."""
    roles: dict[str, list[str]] = {}
    for i, row in enumerate(config.participants):
        number = (i if row._row is None else row._row) + 1
        roles.setdefault(row.model, []).append(f"Participant {number}")
    if manager_id:
        roles.setdefault(manager_id, []).append("Manager model")
    if closer:
        roles.setdefault(closer.model_id, []).append("Closing model")
    return {model: ", ".join(where) for model, where in roles.items()}


def _refuse_self(model_ids: list[str], own_prefix: str) -> None:
    own = [m for m in model_ids if own_prefix != "." and m.startswith(own_prefix)]
    if own:
        raise ConfigError(
            f"'{own[0]}' is this conversation pipe itself and cannot take part."
        )


async def _remember(
    gateway: HostGateway, ctx: RequestContext, config: ConversationConfig
) -> None:
    chat_id = _saved_chat_id(ctx)
    if chat_id is None:
        return
    try:
        await gateway.save_chat_config(chat_id, stored_form(config))
    except Exception as exc:
        log.warning("could not save the configuration of chat %s: %s", chat_id, exc)


def _setup_notice(exc: Exception) -> str:
    """The one line a setup that did not end in a conversation leaves in the message."""
    if isinstance(exc, NothingToAnswer):
        return SETUP_SAVED
    if isinstance(exc, SetupKept):
        return SETUP_KEPT
    if isinstance(exc, SetupCancelled):
        return SETUP_CANCELLED
    if isinstance(exc, AccessCheckError):
        log.warning("%s", exc)
        return f"{NOTICE_PREFIX}{md_text(exc.for_user())}*"
    return f"{NOTICE_PREFIX}{md_text(str(exc))}*"


def _emitter_for(
    valves: Any, emit: EmitFn | None, transcript: Transcript, clock: Clock, body: dict
) -> CoalescingEmitter:
    """The run's emitter, paced and budgeted by the admin's valves."""
    return CoalescingEmitter(
        emit,
        transcript.render,
        valves.EMIT_INTERVAL,
        clock,
        host_bytes=_chat_bytes(body),
        save_interval=valves.SAVE_INTERVAL,
        budget=valves.SAVE_BUDGET_KB * 1024,
        max_save_interval=valves.MAX_SAVE_INTERVAL,
        live_at=transcript.live_block_at,
        copies=valves.SAVE_COPIES,
        follow_interval=FOLLOW_INTERVAL,
    )


def _mark_stopped(run: Run, transcript: Transcript) -> None:
    """The user pressed Stop: the cut turn and the status say so, and a message stopped in the
    setup is not left blank."""
    log.debug("conversation stopped by the user")
    transcript.close_live()
    run.stopped()
    if not transcript.render():
        transcript.add_notice(STOPPED_IN_SETUP)


@dataclass
class Prepared:
    """A setup that can run: the config, its speakers (the closing one too) and every model."""

    config: ConversationConfig
    participants: list[Participant]
    profiles: dict[str, ModelProfile]
    manager: ModelProfile | None
    closer: Participant | None
    budget: (
        ContextBudget  # sizes servers named and prompts that worked: shared (Pipe's)
    )
    rng: random.Random


def _cast(
    gateway: HostGateway,
    ctx: RequestContext,
    settings: Settings,
    transcript: Transcript,
    emitter: CoalescingEmitter,
    run: Run,
    body: dict,
    user_info: dict,
    prepared: Prepared,
) -> tuple[Direction, TurnStreamer]:
    """The run's direction and its streamer, which holds the chat so far."""
    streamer = TurnStreamer(
        gateway,
        ctx,
        settings,
        transcript,
        emitter,
        run.clock,
        prepared.budget,
        profiles=prepared.profiles,
        aliases=[p.alias for p in prepared.participants],
        user_name=user_info.get("name") or "User",
        turns=history_turns(conversation_messages(body.get("messages") or [])),
        chat_system=_chat_system(body),
        closing_alias=prepared.closer.alias if prepared.closer else "",
        want_usage=prepared.config.max_total_tokens > 0,
        may_say=[prepared.config.stop_phrase],
    )
    chooser = (
        make_manager(streamer, prepared.manager, run.status)
        if prepared.manager
        else None
    )
    ask = ctx.extra_params.get("__event_call__")  # None without a browser tab (the API)
    moderator = None
    if prepared.config.moderator == "between_rounds" and ask is not None:
        moderator = Moderator(
            run.waiting_on(ask), run.clock, settings.valves.MODERATOR_TIMEOUT
        )
    direction = make_direction(
        prepared.config,
        prepared.participants,
        prepared.closer,
        list(streamer.turns),
        chooser,
        prepared.rng,
        run.clock,
        moderator,
    )
    # Continue Response: the status counts the message's earlier turns too.
    earlier = continued_content(body, ctx.metadata)
    direction.progress.spoken = run.earlier = (
        earlier_turns(earlier, prepared.participants) if earlier else 0
    )
    return direction, streamer


async def _with_usage(text: str, usage: dict[str, int]) -> AsyncIterator[str | dict]:
    """The final transcript, then a frame the host takes the message's `usage` from (0.12.4
    shows it in the message's info tooltip, as for an ordinary model)."""
    yield text
    yield {"choices": [], "usage": usage}


async def _finish(
    emitter: CoalescingEmitter,
    transcript: Transcript,
    handing_over: bool,
    host_stores: bool = True,
) -> str:
    """Flush the final state; return it for the host to show and save (the final save).

    The host turns the returned text into one delta that the open tab appends to what our
    events showed, so before returning we empty the tab's copy with `chat:message`, which the
    host does not store: the tab shows the text once. The host stores the returned text as the
    message, so our own final save would only write the chat once more; it is made on Stop
    (no delta follows, the tab keeps what it shows) and on Continue (the host stores only
    the part the pipe returns).
    """
    transcript.finish()
    # Handing over, the host saves the returned text: that is the final save, unless the
    # message continues an earlier one (the host stores only what the pipe returns).
    # An older host stores only what our events stored: the end is ours to save there.
    continues = transcript.added() != transcript.render()
    await emitter.flush(store=not handing_over or continues or not host_stores)
    final = (
        transcript.added()
    )  # on Continue the host puts it after the message it continues
    if handing_over:
        await emitter.hand_over()
    return final


# ============================================================================
# Pipe: the entry point Open WebUI calls
# ============================================================================


class Pipe:
    """Open WebUI entry point. Shared by every request: it holds only valves and factories."""

    # The admin's valves (Admin > Functions > the gear), in the order Open WebUI shows them:
    # what admins tune first (rounds, tokens, time limits, tools, the dialog), the streaming
    # internals last. (No class docstring: it would become the schema's description.)
    class Valves(BaseModel):
        MAX_ROUNDS: int = Field(
            default=20,
            ge=1,
            le=1000,
            title="Most rounds",
            description="Highest number of rounds a user may ask for.",
        )
        MAX_TOKENS: int = Field(
            default=400,
            ge=0,
            title="Max tokens per turn",
            description="Most tokens one turn may write (sent as `max_tokens`). A participant's "
            "own value in the setup dialog wins. Reasoning models count their thinking too, so "
            "give them more. 0: no limit.",
        )
        TURN_TIME_LIMIT: float = Field(
            default=180,
            ge=0,
            title="Time limit per turn (s)",
            description="Seconds one turn may stream, however busy the model is; the turn keeps "
            "what arrived and is marked as cut. 0: no limit.",
        )
        TURN_TIMEOUT: float = Field(
            default=300,
            gt=0,
            title="Silence timeout (s)",
            description="Seconds a participant's model may stay silent (no chunk) before its "
            "turn ends with an error; also the limit for a non-streamed retry.",
        )
        CONTEXT_TOKENS: int = Field(
            default=8192,
            ge=0,
            title="Assumed context size (tokens)",
            description="Context size assumed for a participant model whose Open WebUI "
            "settings name none (`num_ctx` or `max_context`). Older turns are left out and the longest "
            "parts cut in the middle to fit. "
            "0: fit only after the model reports a context-length error.",
        )
        OLLAMA_CONTEXT_TOKENS: int = Field(
            default=4096,
            ge=0,
            title="Ollama context size (tokens)",
            description="Context size for an Ollama model whose Open WebUI settings name no "
            "`num_ctx`: Ollama's default below 24 GiB of VRAM (OLLAMA_CONTEXT_LENGTH sets it on "
            "the server). Requests are fitted to it and ask for it as `num_ctx`, so Ollama "
            "drops nothing silently. 0: ask for none and fit as for other models.",
        )
        MAX_TOOL_ROUNDS: int = Field(
            default=5,
            ge=0,
            le=50,
            title="Tool rounds per turn",
            description="Tool-call rounds per turn before the model must answer.",
        )
        MAX_TOOL_CORRECTIONS: int = Field(
            default=2,
            ge=0,
            le=10,
            title="Retries after a malformed tool call",
            description="Silent retries per turn when a model calls an unknown tool or sends "
            "arguments that are not a JSON object.",
        )
        TOOL_TIMEOUT: float = Field(
            default=120,
            gt=0,
            title="Tool timeout (s)",
            description="Seconds one tool call may run; then the model is told it timed out. A "
            "synchronous tool runs in a thread, which finishes in the background.",
        )
        TOOL_RESULT_MAX_CHARS: int = Field(
            default=100_000,
            ge=1000,
            title="Longest tool result (characters)",
            description="Longest tool result given back to the model; the tool block in the "
            "chat shows at most a fifth of it.",
        )
        BUILTIN_TOOLS: bool = Field(
            default=False,
            title="Offer built-in tools",
            description="Offer Open WebUI's built-in tools (memory, notes, chats, knowledge, "
            "...) to every participant whose model uses native function calling. Off: a "
            "participant gets tools only when some are picked for the chat or its model, or a "
            "feature such as web search is switched on.",
        )
        CONFIG_OVERLAY: bool = Field(
            default=True,
            title="Setup dialog",
            description="Open the setup dialog in the browser for a chat that has no setup yet. "
            "Off: the user valves are used.",
        )
        OVERLAY_TIMEOUT: float = Field(
            default=180,
            ge=5,
            title="Setup dialog timeout (s)",
            description="Seconds the dialog waits without a key, click or edit before it "
            "closes; the conversation then runs with the user valves and the next message asks "
            "again. Typing keeps it open (an hour at most).",
        )
        MODERATOR_TIMEOUT: float = Field(
            default=120,
            gt=0,
            title="Moderator prompt timeout (s)",
            description="With *Ask me between rounds* on, seconds the prompt *Anything to add "
            "before round N?* waits for an answer; then the conversation goes on.",
        )
        MANAGER_TIMEOUT: float = Field(
            default=30,
            gt=0,
            title="Manager timeout (s)",
            description="Seconds the manager may take to pick a speaker; then the next "
            "participant in order speaks.",
        )
        MANAGER_HISTORY_CHARS: int = Field(
            default=8000,
            ge=200,
            title="Conversation shown to the manager (characters)",
            description="Newest characters of the conversation shown to the manager.",
        )
        TASK_TIMEOUT: float = Field(
            default=30,
            gt=0,
            title="Title and tags timeout (s)",
            description="Seconds a background task (title, tags, follow-ups) may take. Open "
            "WebUI keeps the message busy until its tasks end; one that takes longer is "
            "dropped. A task model that gave no usable answer gets a third of it (and 120 "
            "tokens) until it answers one.",
        )
        SHOW_MODELS: bool = Field(
            default=False,
            title="Show models in headings",
            description="Show which model speaks behind each alias, in small type after the "
            "speaker's name.",
        )
        SHOW_USAGE: bool = Field(
            default=True,
            title="Usage table at the end",
            description="End each conversation with a collapsed table of what it cost: per "
            "participant, the manager and the closing turn, turns, prompt and completion tokens "
            "(the backend's counts; ~ marks estimates) and seconds, and totals. "
            "Never part of what the models read.",
        )
        STOP_SEQUENCES: bool = Field(
            default=True,
            title="Stop at other speakers' names",
            description="Send `Name said: \"` at a line start (the pipe's own transcript "
            "form) for the next speakers, the closing speaker and the user as stop sequences, "
            "so a model ends its turn instead of writing their lines (the one form the guard "
            "always cuts: a bare `Name:` would also cut a scorecard). Switch off for models "
            "that reject `stop`; the pipe still cuts such lines itself.",
        )
        PIPE_NAME: str = Field(
            default="Multi-Model Conversation",
            title="Name in the model picker",
            description="What users pick in the model list to start a conversation.",
        )
        EMIT_INTERVAL: float = Field(
            default=0.033,
            ge=0,
            le=5,
            title="Screen update interval (s)",
            description="Seconds between two updates of the message on screen while it streams "
            "(0.033: about 30 a second). An update carries only the new text "
            "(`chat:message:delta`), or the whole message when earlier text changed "
            "(`chat:message`); Open WebUI forwards both to the tab without writing its database. "
            "Saves follow *Save interval*. 0: no coalescing, every chunk is sent and saved whole "
            "(a `replace` that rewrites the whole chat), for comparisons only.",
        )
        SAVE_INTERVAL: float = Field(
            default=1.0,
            ge=0,
            le=60,
            title="Save interval (s)",
            description="Shortest gap between two saves of the message while it streams. "
            "Saves come at the end of each turn and at least every *Longest gap between "
            "saves*, within *Save budget (chat copies)*; the screen updates in between, and "
            "the end is always saved.",
        )
        SAVE_BUDGET_KB: float = Field(
            default=12,
            ge=0,
            title="Save budget (KB per second)",
            description="KB of chat Open WebUI may rewrite per second while a message streams: "
            "long chats and long messages are saved less often (at most *Longest gap between "
            "saves* apart), so whole copies of the message reach the tab at a rate that does "
            "not grow with it. 0: *Save interval* only.",
        )
        MAX_SAVE_INTERVAL: float = Field(
            default=15.0,
            ge=0,
            le=120,
            title="Longest gap between saves (s)",
            description="While a turn streams, its text is saved at least this often, as "
            "long as *Save budget (chat copies)* allows; a turn's end is saved at once. Also "
            "the longest gap between two whole copies of the message on screen.",
        )
        SAVE_COPIES: float = Field(
            default=1.5,
            ge=0,
            title="Save budget (chat copies)",
            description="Every save (and status line) rewrites the whole chat in Open WebUI's "
            "database. All of one message's saves together rewrite at most this many copies "
            "of the chat (plus the last status and the final save), however long the chat and "
            "the conversation: in a long chat, saves come further apart. 0: no limit.",
        )

    # The user's valves; the names are those of "Multi Model Conversations v2", so saved
    # settings carry over (only the titles shown in Open WebUI are new).
    class UserValves(BaseModel):
        NUM_PARTICIPANTS: ParticipantCount = Field(
            default=2,
            title="Participants",
            description="How many participants take part when the setup dialog is skipped.",
        )
        ROUNDS_PER_CONVERSATION: int = Field(
            default=3,
            ge=1,
            title="Rounds",
            description="Every participant speaks once per round.",
        )
        Participant1Model: str = Field(
            default="",
            title="Participant 1: model",
            description="Model id of participant 1.",
        )
        Participant1Alias: str = Field(
            default="",
            title="Participant 1: alias",
            description="Name of participant 1 (empty: the model's name).",
        )
        Participant1SystemMessage: str = Field(
            default="",
            title="Participant 1: persona",
            description="Persona of participant 1.",
        )
        Participant2Model: str = Field(
            default="",
            title="Participant 2: model",
            description="Model id of participant 2.",
        )
        Participant2Alias: str = Field(
            default="",
            title="Participant 2: alias",
            description="Name of participant 2 (empty: the model's name).",
        )
        Participant2SystemMessage: str = Field(
            default="",
            title="Participant 2: persona",
            description="Persona of participant 2.",
        )
        Participant3Model: str = Field(
            default="",
            title="Participant 3: model",
            description="Model id of participant 3.",
        )
        Participant3Alias: str = Field(
            default="",
            title="Participant 3: alias",
            description="Name of participant 3 (empty: the model's name).",
        )
        Participant3SystemMessage: str = Field(
            default="",
            title="Participant 3: persona",
            description="Persona of participant 3.",
        )
        Participant4Model: str = Field(
            default="",
            title="Participant 4: model",
            description="Model id of participant 4.",
        )
        Participant4Alias: str = Field(
            default="",
            title="Participant 4: alias",
            description="Name of participant 4 (empty: the model's name).",
        )
        Participant4SystemMessage: str = Field(
            default="",
            title="Participant 4: persona",
            description="Persona of participant 4.",
        )
        Participant5Model: str = Field(
            default="",
            title="Participant 5: model",
            description="Model id of participant 5.",
        )
        Participant5Alias: str = Field(
            default="",
            title="Participant 5: alias",
            description="Name of participant 5 (empty: the model's name).",
        )
        Participant5SystemMessage: str = Field(
            default="",
            title="Participant 5: persona",
            description="Persona of participant 5.",
        )
        AllParticipantsApendedMessage: str = Field(
            default=DEFAULT_SHARED_INSTRUCTION,
            title="Shared instruction",
            description="Added to every participant's system prompt. `{alias}` and `{others}` "
            "are filled in; text without `{alias}` gets the alias appended (as v2 did).",
        )
        ManagerModel: str = Field(
            default="",
            title="Manager model",
            description="Model id of the manager (empty: the first participant's model).",
        )
        ManagerSystemMessage: str = Field(
            default=DEFAULT_MANAGER_SYSTEM,
            title="Manager: system message",
            description="The manager's system message.",
        )
        ManagerSelectionPrompt: str = Field(
            default=DEFAULT_MANAGER_PROMPT,
            title="Manager: selection prompt",
            description="What the manager is asked before each turn; `{history}`, "
            "`{last_speaker}` and `{participant_list}` are filled in.",
        )
        Selection: SelectionChoice = Field(
            default="",
            title="Who speaks next",
            description="`round_robin`: everyone in order; `manager`: the manager model picks; "
            "`random`: anyone but the last speaker; `mention`: those you @name in your message "
            "first. Empty: round robin (or what a preset says).",
        )
        ShowManagerReason: bool = Field(
            default=True,
            title="Show the manager's reason",
            description="Show the manager's answer in a collapsed block under each turn it picked.",
        )
        AskBetweenRounds: bool = Field(
            default=False,
            title="Ask me between rounds",
            description="After each round, Open WebUI asks *Anything to add before round N?*: "
            "what you type joins the conversation as your words, `end` closes it, empty goes "
            "on.",
        )
        PeerReview: bool = Field(
            default=False,
            title="Peer review (council)",
            description="With *Who speaks next* = `council`: after the round, each participant "
            "ranks the others' answers, shown without names, and a table sums up the ranking.",
        )
        PassAllowed: bool = Field(
            default=False,
            title="Allow PASS",
            description="A participant may answer PASS to skip its turn.",
        )
        StopPhrase: str = Field(
            default="",
            title="Stop phrase",
            description="Any participant saying this ends the conversation (empty: none).",
        )
        MaxSeconds: float = Field(
            default=0,
            ge=0,
            title="Time budget (s)",
            description="Ends the conversation after the turn that uses it up. 0: none.",
        )
        MaxTotalTokens: int = Field(
            default=0,
            ge=0,
            title="Token budget",
            description="Tokens of all replies together (prompt and reply), checked after each "
            "turn. 0: none.",
        )
        ClosingModel: str = Field(
            default="",
            title="Closing turn: model",
            description="Model id of a closing turn (verdict, summary) after the conversation. "
            "Empty: no closing turn, unless a task is set (then the first participant's model).",
        )
        ClosingAlias: str = Field(
            default="",
            title="Closing turn: name",
            description="Name of the closing speaker (empty: Closing).",
        )
        ClosingPrompt: str = Field(
            default="",
            title="Closing turn: task",
            description="What the closing turn should do (empty: sum up and conclude).",
        )
        ClosingVote: bool = Field(
            default=False,
            title="End with a vote",
            description="Every participant votes in a short turn of its own, and the votes are "
            "tallied (instead of a closing turn).",
        )
        Preset: PresetChoice = Field(
            default="",
            title="Preset",
            description="A named setup that fills whatever you leave unset: `debate`, "
            "`brainstorm`, `review_panel`, `interview` or `council`. Empty: none.",
        )
        Temperature: float = Field(
            default=1.0, title="Temperature", description="Sampling temperature."
        )
        Top_k: int = Field(
            default=50,
            title="Top-k",
            description="Top-k sampling (sent to Ollama models only).",
        )
        Top_p: float = Field(
            default=0.8, title="Top-p", description="Top-p (nucleus) sampling."
        )

        @model_validator(mode="before")
        @classmethod
        def manager_switch(cls, data: Any) -> Any:
            """v2's "Use a manager" switch, still in saved valves, is *Who speaks next*."""
            return manager_switch_as_selection(data)

        # The host resets every user valve when one fails: old free-text values must load.
        @field_validator("NUM_PARTICIPANTS", mode="before")
        @classmethod
        def old_count(cls, value: Any) -> Any:
            return participant_count(value)

        @field_validator("Selection", mode="before")
        @classmethod
        def old_selection(cls, value: Any) -> Any:
            return valve_choice(value, SelectionChoice)

        @field_validator("Preset", mode="before")
        @classmethod
        def old_preset(cls, value: Any) -> Any:
            return valve_choice(value, PresetChoice)

    # Replaceable by tests: how to reach the host, and what time is.
    gateway_factory: Callable[[Any], HostGateway] = HostGateway
    clock: Clock = Clock()
    rng_factory: Callable[[], random.Random] = random.Random  # a new one per run

    def __init__(self) -> None:
        self.type = "manifold"
        self.valves = self.Valves()
        # Facts about models (context sizes, prompts that worked), shared by every run.
        self.model_facts = ModelFacts()
        # Task models' unanswered tasks in a row
        self.task_failures: dict[str, int] = {}

    def _budget(self) -> ContextBudget:
        """A run's view of the models' contexts, over what every run has learnt."""
        return ContextBudget(
            self.valves.CONTEXT_TOKENS,
            self.model_facts,
            ollama_tokens=self.valves.OLLAMA_CONTEXT_TOKENS,
        )

    def pipes(self) -> list[dict[str, str]]:
        # v2's pipe id, so chats that used it keep their model after an upgrade.
        return [{"id": "Conversation-pipe", "name": self.valves.PIPE_NAME}]

    async def pipe(
        self,
        body: dict,
        __user__: dict | None = None,
        __request__: Any = None,
        __event_emitter__: EmitFn | None = None,
        __event_call__: Callable[[dict], Awaitable[Any]] | None = None,
        __metadata__: dict | None = None,
        __task__: Any = None,
        __files__: list | None = None,
        __chat_id__: str | None = None,
        __message_id__: str | None = None,
        __session_id__: str | None = None,
        __oauth_token__: Any = None,
    ) -> str | AsyncIterator[str | dict]:
        user_info = __user__ or {}
        metadata = __metadata__ or {}
        gateway = self.gateway_factory(__request__)
        user_valves = user_info.get("valves") or self.UserValves()
        user = await gateway.get_user(user_info.get("id", ""))
        if user is None:
            return "Your user account could not be found."
        ctx = RequestContext(
            user=user,
            metadata=metadata,
            tool_ids=list(metadata.get("tool_ids") or []),
            features=dict(metadata.get("features") or {}),
            terminal_id=metadata.get("terminal_id"),
            builtin_tools=self.valves.BUILTIN_TOOLS,
            extra_params={
                "__user__": user_info,
                "__request__": __request__,
                "__metadata__": metadata,
                "__event_call__": __event_call__,
                "__event_emitter__": _tool_event_filter(__event_emitter__),
                "__chat_id__": metadata.get("chat_id"),
                "__message_id__": metadata.get("message_id"),
                "__session_id__": metadata.get("session_id"),
                "__files__": metadata.get("files") or __files__ or [],
                "__messages__": body.get("messages") or [],
                "__oauth_token__": __oauth_token__,
            },
        )
        own_prefix = str(body.get("model") or "").split(".", 1)[0] + "."
        if __task__:
            return await self._background_task(
                gateway, ctx, body, user_valves, own_prefix, str(__task__)
            )
        usage: dict[str, int] = {}
        text = await self._conversation(
            gateway,
            ctx,
            body,
            user_info,
            user_valves,
            own_prefix,
            __event_emitter__,
            __event_call__,
            usage,
        )
        return _with_usage(text, usage) if usage and body.get("stream") else text

    # -- a conversation ----------------------------------------------------------------------
    async def _conversation(
        self,
        gateway: HostGateway,
        ctx: RequestContext,
        body: dict,
        user_info: dict,
        user_valves: Any,
        own_prefix: str,
        emit: EmitFn | None,
        event_call: Callable[[dict], Awaitable[Any]] | None,
        usage: dict[str, int],
    ) -> str:
        """The conversation; returns the final transcript and fills in `usage` (its totals)."""
        valves = self.valves
        clock = self.clock
        transcript = Transcript(clock.now, prefix=continued_content(body, ctx.metadata))
        emitter = _emitter_for(valves, emit, transcript, clock, body)
        settings = Settings.read(valves, user_valves)
        run = Run(transcript, emitter, clock)
        dialog = None
        if event_call is not None and valves.CONFIG_OVERLAY:
            message_id = ctx.metadata.get("message_id")
            dialog = SetupDialog(
                run.waiting_on(event_call),
                emitter,
                message_id,
                clock,
                valves.OVERLAY_TIMEOUT,
            )
        started = clock.now()
        try:
            try:
                prepared = await self._prepare(
                    gateway, ctx, body, user_valves, own_prefix, dialog
                )
            except (ConfigError, AccessCheckError, SetupCancelled) as exc:
                transcript.add_notice(_setup_notice(exc))
                run.not_started(exc)
                return await _finish(
                    emitter, transcript, True, gateway.stores_returned_text()
                )
            log.info(
                "conversation start: %d participants, %d rounds, manager=%s",
                len(prepared.participants),
                prepared.config.rounds,
                prepared.config.use_manager,
            )
            direction, streamer = _cast(
                gateway,
                ctx,
                settings,
                transcript,
                emitter,
                run,
                body,
                user_info,
                prepared,
            )
            await run.converse(direction, streamer)
            usage.update(streamer.ledger.message_usage())
            run.end_status()
            log.info(
                "conversation end: %d turns in %.1f s, %d events",
                direction.progress.spoken,
                clock.now() - started,
                emitter.sent_events,
            )
        except asyncio.CancelledError:
            _mark_stopped(run, transcript)
            await asyncio.shield(_finish(emitter, transcript, handing_over=False))
            raise
        except Exception as exc:
            log.exception("conversation failed")
            transcript.add_notice(
                f"{NOTICE_PREFIX}The conversation stopped: {md_text(str(exc))}*"
            )
            run.end_status("stopped by an error")
        return await _finish(emitter, transcript, True, gateway.stores_returned_text())

    async def _prepare(
        self,
        gateway: HostGateway,
        ctx: RequestContext,
        body: dict,
        user_valves: Any,
        own_prefix: str,
        dialog: SetupDialog | None,
    ) -> Prepared:
        """The config, its speakers (closing too) and every model resolved; ConfigError says
        what to fix.

        A new config is remembered for the chat only once every model in it passed setup.
        """
        chosen, saved, remember = await self._choose_config(
            gateway, ctx, body, user_valves, own_prefix, dialog
        )
        config = (
            one_more_round(chosen) if continued_content(body, ctx.metadata) else chosen
        )
        runtime = gateway.runtime_models()
        names = {m: d.get("name") or m for m, d in runtime.items()}
        participants = make_participants(config, names)
        closer = make_closer(config, participants, names)
        manager_id = config.manager_model or participants[0].model_id
        roles = _model_roles(config, manager_id if config.use_manager else None, closer)
        try:
            _refuse_self(list(roles), own_prefix)
            profiles = await resolve_profiles(
                gateway, ctx, runtime, list(roles), with_tools=True, roles=roles
            )
        except ConfigError as exc:
            if saved:
                raise ConfigError(f"{exc} {_RECONFIGURE_HINT}") from exc
            raise
        if remember:
            await _remember(gateway, ctx, chosen)
        if not any(
            m.get("role") == "user"
            for m in conversation_messages(body.get("messages") or [])
        ):
            raise NothingToAnswer  # the chat holds only /reconfigure so far
        manager = profiles[manager_id] if config.use_manager else None
        return Prepared(
            config,
            participants,
            profiles,
            manager,
            closer,
            self._budget(),
            self.rng_factory(),
        )

    async def _choose_config(
        self,
        gateway: HostGateway,
        ctx: RequestContext,
        body: dict,
        user_valves: Any,
        own_prefix: str,
        dialog: SetupDialog | None,
    ) -> tuple[ConversationConfig, bool, bool]:
        """Saved for this chat, else the dialog's answer, else the user valves; SetupCancelled
        if the user closed the dialog.

        Returns the config, whether it was the saved one, and whether to remember it (once
        every model in it has passed setup): not a saved one, nor a timed-out dialog's fallback.
        """
        max_rounds = self.valves.MAX_ROUNDS
        chat_id = _saved_chat_id(ctx)
        saved = await gateway.load_chat_config(chat_id) if chat_id else None
        if saved and not is_command(_last_user_text(body)):
            try:
                return parse_config(saved, max_rounds), True, False
            except ConfigError as exc:
                raise ConfigError(f"{exc} {_RECONFIGURE_HINT}") from exc
        settings = config_from_user_valves(user_valves)
        if dialog is None:
            return parse_config(settings, max_rounds), False, True

        def script(shown: dict, problem: str) -> str:
            # No status line around the dialog: it shows itself, and every status event
            # makes the host rewrite the whole chat.
            return overlay_script(
                shown,
                own_prefix,
                self.valves.OVERLAY_TIMEOUT,
                max_rounds,
                self.valves.MAX_TOKENS,
                ctx.metadata.get("message_id"),
                settings={
                    **{k: v for k, v in settings.items() if k != "preset"},
                    "rounds": valve_rounds(user_valves),  # preset None: the user's own
                },
                problem=problem,
                saved=bool(saved),
            )

        opening = dialog_form(
            saved or settings, max_rounds
        )  # /reconfigure: this chat's setup
        try:
            config, remember = await ask_for_setup(
                dialog, script, opening, settings, max_rounds
            )
        except SetupCancelled as exc:
            if saved:  # /reconfigure cancelled: the chat's setup stays as it was
                raise SetupKept from exc
            raise
        return config, False, remember

    # -- title, tags, follow-ups -------------------------------------------------------------
    async def _background_task(
        self,
        gateway: HostGateway,
        ctx: RequestContext,
        body: dict,
        user_valves: Any,
        own_prefix: str,
        task: str,
    ) -> str:
        """Answer the host's background task with one bounded plain completion from Open
        WebUI's task model, else the first participant's; an answer of the wrong shape is ''.
        """
        chat_id = _saved_chat_id(ctx)
        raw = await gateway.load_chat_config(chat_id) if chat_id else None
        runtime = gateway.runtime_models()
        try:
            config = parse_config(
                raw or config_from_user_valves(user_valves), self.valves.MAX_ROUNDS
            )
            candidates = [*await _task_models(gateway), config.participants[0].model]
            profile = await _first_usable(gateway, ctx, runtime, candidates, own_prefix)
        except ConfigError as exc:
            log.debug("background task skipped: %s", exc)
            return ""
        except AccessCheckError as exc:
            log.warning("background task skipped: %s", exc)
            return ""
        messages = body.get("messages") or []
        wanted = body.get("max_tokens")
        max_tokens = (
            min(wanted, TASK_MAX_TOKENS)
            if isinstance(wanted, int) and wanted > 0
            else TASK_MAX_TOKENS
        )
        tasks = TaskBudget(self.task_failures)
        max_tokens, seconds = tasks.limits(
            profile.model_id, max_tokens, self.valves.TASK_TIMEOUT
        )
        asked = ask_task_model(
            gateway, ctx.user, profile, self._budget(), messages, max_tokens
        )
        try:
            # The host holds the message open until its tasks end: they must end soon.
            text = await within(self.clock, seconds, asked)
        except TimeoutError:
            log.debug(
                "background task %s took over %g s on %s",
                task,
                seconds,
                profile.model_id,
            )
            tasks.record(profile.model_id, answered=False)
            return ""
        except ModelCallError as exc:
            log.warning("background task failed on %s: %s", profile.model_id, exc)
            return ""
        answer = task_answer(task, clean_turn_text(text), _text_of_messages(messages))
        if task in TASK_SHAPES:
            tasks.record(profile.model_id, answered=bool(answer))
        return answer


# ============================================================================
# Data: presets, the setup dialog's script, valve declarations (read by the code above at run time)
# ============================================================================

# Named bundles of the keys above; the dialog fills its fields from them and keeps them
# editable, and a config naming a preset gets the preset's value for every key it leaves out.
PRESETS: dict[str, dict[str, Any]] = {
    "debate": {
        "label": "Debate: opening, rebuttals, verdict",
        "config": {
            "rounds": 2,
            "selection": "round_robin",
            "closing": {
                "alias": "Judge",
                "prompt": "You are the judge of this debate. Weigh both sides' arguments and "
                "give a verdict: which side argued better, and why, in one short paragraph.",
            },
        },
        "participants": [
            {
                "alias": "Pro",
                "system_message": "You argue FOR the motion. In round 1 give your opening "
                "statement; in later rounds rebut the other side's latest points.",
            },
            {
                "alias": "Con",
                "system_message": "You argue AGAINST the motion. In round 1 give your opening "
                "statement; in later rounds rebut the other side's latest points.",
            },
        ],
    },
    "brainstorm": {
        "label": "Brainstorm",
        "config": {
            "rounds": 3,
            "selection": "random",
            "pass_allowed": True,
            "closing": {
                "alias": "Summary",
                "prompt": "List every idea proposed, grouped by theme, best first, with one "
                "line each, then name the three most promising.",
            },
        },
        "participants": [
            {"alias": "Dreamer", "system_message": "Propose bold, unusual ideas."},
            {
                "alias": "Builder",
                "system_message": "Build on the others' ideas; make them work.",
            },
            {
                "alias": "Skeptic",
                "system_message": "Point out the weak spot of the latest idea.",
            },
        ],
    },
    "review_panel": {
        "label": "Review panel (ends in a vote)",
        "config": {
            "rounds": 2,
            "selection": "round_robin",
            "pass_allowed": True,
            "closing": "vote",
        },
        "participants": [
            {
                "alias": "Correctness",
                "system_message": "Review for correctness and edge cases.",
            },
            {
                "alias": "Security",
                "system_message": "Review for security and privacy risks.",
            },
            {
                "alias": "Clarity",
                "system_message": "Review for clarity and maintainability.",
            },
        ],
    },
    "interview": {
        "label": "Interview",
        "config": {
            "rounds": 4,
            "selection": "round_robin",
            "stop_phrase": "THAT CONCLUDES THE INTERVIEW",
            "closing": {
                "alias": "Notes",
                "prompt": "Write the interview notes: strengths, concerns, and a recommendation.",
            },
        },
        "participants": [
            {
                "alias": "Interviewer",
                "system_message": "You lead the interview: ask one question at a time and "
                "follow up on vague answers.",
            },
            {
                "alias": "Candidate",
                "system_message": "You are interviewed: answer candidly.",
            },
        ],
    },
    "council": {
        "label": "Council: answer at once, rank each other, a chair sums up",
        "config": {
            "rounds": 1,
            "selection": "council",
            "peer_review": True,
            "closing": {
                "alias": "Chair",
                "prompt": "You chair this council. Synthesize the best answer to the user's "
                "question from the participants' answers and their ranking: keep what the "
                "best-ranked answers got right, fix what they got wrong, and say where the "
                "council disagreed.",
            },
        },
        "participants": [
            {
                "alias": "Analyst",
                "system_message": "Answer carefully, with the reasoning shown.",
            },
            {
                "alias": "Expert",
                "system_message": "Answer as a domain expert, precisely.",
            },
            {
                "alias": "Contrarian",
                "system_message": "Answer, and test the obvious answer.",
            },
        ],
    },
}

OVERLAY_JS = r"""
const DEFAULTS = __DEFAULTS__;
const SETTINGS = __SETTINGS__;
const PROBLEM = __PROBLEM__;
const LIMITS = __LIMITS__;
const RESOLVED_KEY = __RESOLVED_KEY__;
const OWN_PREFIX = __OWN_PREFIX__;
const TIMEOUT_MS = __TIMEOUT_MS__;
const OPEN_MS = __OPEN_MS__;
const MAX_ROUNDS = __MAX_ROUNDS__;
const PRESETS = __PRESETS__;
const MAX_TOKENS = __MAX_TOKENS__;
const MARKS = __MARKS__;
const MESSAGE_ID = __MESSAGE_ID__;
const CLOSE_EVENT = __CLOSE_EVENT__;
const SAVED = __SAVED__;
const CANCELLED = { cancelled: true };
const TIMED_OUT = { timed_out: true };
let models = [];
try {
  const res = await fetch('/api/models', {
    headers: { Authorization: 'Bearer ' + localStorage.token },
  });
  const body = await res.json();
  models = (body.data || body || []).filter(
    (m) => m && m.id && !m.id.startsWith(OWN_PREFIX) && !(m.pipe && m.pipe.type === 'filter')
  );
} catch (e) {
  console.error('multi-model conversation: could not list models', e);
}
const CSS = `
#mmc-config-overlay { --bg: #fff; --fg: #1f2937; --muted: #4b5563; --line: #d1d5db;
  --field: #fff; --hover: #f3f4f6; --accent: #2563eb; color-scheme: light;
  position: fixed; inset: 0; z-index: 99999; display: flex; align-items: center;
  justify-content: center; padding: 16px; box-sizing: border-box; background: rgba(0,0,0,.5);
  font: 14px/1.4 system-ui, -apple-system, 'Segoe UI', sans-serif; text-align: left; }
html.dark #mmc-config-overlay { --bg: #1e1e21; --fg: #e5e7eb; --muted: #a1a1aa; --line: #3f3f46;
  --field: #27272a; --hover: #303036; --accent: #3b82f6; color-scheme: dark; }
#mmc-config-overlay * { box-sizing: border-box; }
#mmc-config-overlay .mmc-card { display: flex; flex-direction: column; width: min(760px, 100%);
  max-height: 100%; margin: 0; background: var(--bg); color: var(--fg); border-radius: 16px;
  box-shadow: 0 12px 48px rgba(0,0,0,.35); overflow: hidden; }
#mmc-config-overlay .mmc-head { flex: none; display: flex; align-items: flex-start; gap: 12px;
  padding: 14px 20px 8px; }
#mmc-config-overlay .mmc-head > div { flex: 1; }
#mmc-config-overlay h2 { margin: 0; font-size: 18px; font-weight: 600; }
#mmc-config-overlay .mmc-head p { margin: 2px 0 0; color: var(--muted); }
#mmc-config-overlay .mmc-body { flex: 1 1 auto; min-height: 0; overflow-y: auto;
  overscroll-behavior: contain; padding: 4px 20px 12px; }
#mmc-config-overlay .mmc-foot { flex: none; display: flex; flex-wrap: wrap; align-items: center;
  justify-content: flex-end; gap: 8px; padding: 12px 20px; border-top: 1px solid var(--line);
  background: var(--bg); }
#mmc-config-overlay .mmc-foot .mmc-error { flex: 1 1 100%; }
#mmc-config-overlay .mmc-foot .mmc-error:empty { display: none; }
#mmc-config-overlay .mmc-error, #mmc-config-overlay .mmc-field-error { color: #dc2626;
  font-weight: 600; }
#mmc-config-overlay .mmc-field-error { margin: 3px 0 0; font-size: 12px; }
html.dark #mmc-config-overlay .mmc-error,
html.dark #mmc-config-overlay .mmc-field-error { color: #f87171; }
#mmc-config-overlay h3 { margin: 14px 0 6px; font-size: 12px; font-weight: 700;
  letter-spacing: .04em; text-transform: uppercase; color: var(--muted); }
#mmc-config-overlay .mmc-grid { display: grid; gap: 8px 12px;
  grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); }
#mmc-config-overlay .mmc-grid > * { min-width: 0; }
#mmc-config-overlay .mmc-wide { grid-column: 1 / -1; }
#mmc-config-overlay .mmc-top { grid-template-columns: 2fr 1fr 1fr; }
#mmc-config-overlay .mmc-row { grid-template-columns: 3fr 3fr 2fr; }
@media (max-width: 560px) {
  #mmc-config-overlay { padding: 8px; }
  #mmc-config-overlay .mmc-grid { grid-template-columns: 1fr; }
  #mmc-config-overlay .mmc-head, #mmc-config-overlay .mmc-body,
  #mmc-config-overlay .mmc-foot { padding-left: 14px; padding-right: 14px; }
}
#mmc-config-overlay label { display: block; margin: 0 0 3px; font-size: 12px; font-weight: 600;
  color: var(--muted); }
#mmc-config-overlay label.mmc-check { display: flex; gap: 8px; align-items: center;
  margin: 8px 0 0; font-size: 14px; font-weight: 400; color: var(--fg); }
#mmc-config-overlay input:not([type=checkbox]), #mmc-config-overlay select,
#mmc-config-overlay textarea { width: 100%; max-width: 100%; margin: 0; padding: 6px 9px;
  border: 1px solid var(--line); border-radius: 8px; background-color: var(--field);
  color: var(--fg); font: inherit; }
#mmc-config-overlay select { padding-right: 2.2em; text-overflow: ellipsis; }
#mmc-config-overlay input[type=checkbox] { flex: none; width: 1.1em; height: 1.1em; margin: 0;
  accent-color: var(--accent); }
#mmc-config-overlay textarea { resize: vertical; min-height: 2.6em; }
#mmc-config-overlay [aria-invalid=true] { border-color: #dc2626; }
#mmc-config-overlay :focus-visible { outline: 2px solid var(--accent); outline-offset: 1px; }
#mmc-config-overlay fieldset { margin: 8px 0; padding: 6px 12px 10px; border: 1px solid var(--line);
  border-left: 6px solid var(--mark); border-radius: 10px;
  background: color-mix(in srgb, var(--mark) 9%, var(--bg)); }
#mmc-config-overlay legend { padding: 0 4px; font-weight: 600; }
#mmc-config-overlay ul[role=listbox] { max-height: 180px; overflow-y: auto; margin: 4px 0 0;
  padding: 4px; list-style: none; background: var(--field); border: 1px solid var(--line);
  border-radius: 8px; }
#mmc-config-overlay [role=option] { padding: 5px 8px; border-radius: 6px; cursor: pointer; }
#mmc-config-overlay [role=option]:hover { background: var(--hover); }
#mmc-config-overlay [role=option][aria-selected=true] { background: var(--accent); color: #fff; }
#mmc-config-overlay [role=option] small { margin-left: 8px; opacity: .7; }
#mmc-config-overlay li.mmc-none { padding: 5px 8px; color: var(--muted); }
#mmc-config-overlay button { padding: 8px 14px; border: 1px solid var(--line); border-radius: 10px;
  background: transparent; color: inherit; font: inherit; cursor: pointer; white-space: nowrap; }
#mmc-config-overlay button:hover { background: var(--hover); }
#mmc-config-overlay button.mmc-primary { background: var(--accent); border-color: var(--accent);
  color: #fff; font-weight: 600; }
#mmc-config-overlay button.mmc-close { padding: 2px 10px; border: 0; font-size: 20px; }
`;
return await new Promise((resolve) => {
  let uid = 0;
  const nextId = (what) => 'mmc-' + what + '-' + (++uid);
  const el = (tag, props = {}, children = []) => {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (key.startsWith('aria-') || key === 'role' || key === 'for') node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children) node.append(child);
    return node;
  };
  // A labelled field: <label for> names the control for screen readers.
  // Each control gets a message slot under it (aria-describedby) for what is wrong with it.
  const field = (text, control, extra = '') => {
    const target = control.input || control;
    if (!target.id) target.id = nextId('field');
    const message = el('p', { className: 'mmc-field-error', id: target.id + '-error', hidden: true });
    target.setAttribute('aria-describedby', message.id);
    target.mmcMessage = message;
    return el('div', { className: extra }, [el('label', { for: target.id, textContent: text }), control.node || control, message]);
  };
  const nameOf = (id) => (models.find((m) => m.id === id) || {}).name || id;
  // The user's models whose id or name holds `text` (case ignored); all of them for ''.
  const matching = (text) => {
    const q = text.trim().toLowerCase();
    return models.filter((m) => !q || m.id.toLowerCase().includes(q) || (m.name || '').toLowerCase().includes(q));
  };

  // A model picker: a combobox that filters the user's models by name or id; stores the id.
  let openPicker = null;
  const picker = (value, name, placeholder) => {
    const listId = nextId('models');
    const input = el('input', {
      type: 'text', name, autocomplete: 'off', spellcheck: false, placeholder,
      role: 'combobox', 'aria-autocomplete': 'list', 'aria-expanded': 'false', 'aria-controls': listId,
    });
    const list = el('ul', { id: listId, role: 'listbox', hidden: true });
    const state = { value: value || '', shown: [], active: -1 };
    const api = { input };
    const show = () => {
      list.replaceChildren(...state.shown.map((m, i) => {
        const option = el('li', { id: listId + '-' + i, role: 'option', 'aria-selected': String(i === state.active) }, [m.name || m.id]);
        option.dataset.value = m.id;
        if (m.name && m.name !== m.id) option.append(el('small', { textContent: m.id }));
        option.addEventListener('mousedown', (e) => { e.preventDefault(); choose(m); });
        return option;
      }));
      if (!state.shown.length) list.append(el('li', { className: 'mmc-none', textContent: 'No model matches' }));
      if (state.active >= 0) {
        input.setAttribute('aria-activedescendant', listId + '-' + state.active);
        list.children[state.active].scrollIntoView({ block: 'nearest' });
      } else input.removeAttribute('aria-activedescendant');
    };
    const open = (query) => {
      state.shown = matching(query);
      state.active = state.shown.length ? Math.max(0, state.shown.findIndex((m) => m.id === state.value)) : -1;
      list.hidden = false;
      input.setAttribute('aria-expanded', 'true');
      if (openPicker && openPicker !== api) openPicker.close();
      openPicker = api;
      show();
    };
    api.close = () => {
      list.hidden = true;
      input.setAttribute('aria-expanded', 'false');
      input.removeAttribute('aria-activedescendant');
      if (openPicker === api) openPicker = null;
    };
    const choose = (m) => {
      state.value = m ? m.id : '';
      input.value = m ? (m.name || m.id) : '';
      input.dataset.modelId = state.value;
      input.removeAttribute('aria-invalid');
      api.close();
    };
    // What the box holds, unless it is the chosen model's name: then every model is shown.
    const typed = () => (state.value && input.value === nameOf(state.value) ? '' : input.value);
    input.value = state.value ? nameOf(state.value) : '';
    input.dataset.modelId = state.value;
    input.addEventListener('input', () => open(input.value));
    input.addEventListener('click', () => (list.hidden ? open(typed()) : api.close()));
    input.addEventListener('keydown', (e) => {
      if (e.key === 'ArrowDown' || e.key === 'ArrowUp') {
        e.preventDefault();
        if (list.hidden) return open(typed());
        const n = state.shown.length;
        if (n) state.active = (state.active + (e.key === 'ArrowDown' ? 1 : n - 1)) % n;
        show();
      } else if (e.key === 'Enter' && !list.hidden) {
        e.preventDefault();  // picks; does not start the conversation
        if (state.active >= 0) choose(state.shown[state.active]);
      }
    });
    // Leaving the box keeps a model only if the text names one (exactly, or one match).
    input.addEventListener('blur', () => {
      api.close();
      const text = input.value.trim().toLowerCase();
      if (!text) return choose(null);
      if (state.value && text === nameOf(state.value).toLowerCase()) return;
      const hits = matching(text);
      const exact = hits.find((m) => m.id.toLowerCase() === text || (m.name || '').toLowerCase() === text);
      if (exact || hits.length === 1) choose(exact || hits[0]);
      else input.value = state.value ? nameOf(state.value) : '';
    });
    Object.defineProperty(api, 'value', { get: () => state.value });
    api.node = el('div', {}, [input, list]);
    return api;
  };

  const style = el('style', { id: 'mmc-config-style', textContent: CSS });
  const overlay = el('div', { id: 'mmc-config-overlay' });
  const titleId = nextId('title');
  const descId = nextId('desc');
  const card = el('form', {
    className: 'mmc-card', noValidate: true, tabIndex: -1,
    role: 'dialog', 'aria-modal': 'true', 'aria-labelledby': titleId, 'aria-describedby': descId,
  });
  const choice = (name, options, value) => {
    const select = el('select', { name });
    for (const [v, label] of options) select.append(el('option', { value: v, textContent: label, selected: v === value }));
    return select;
  };
  const number = (name, value, min, max, step = 1) => el('input', { type: 'number', name, min, step, ...(max ? { max } : {}), value });
  const closingOf = (c) => (c && typeof c === 'object' ? c : {});
  const orderOf = (c) => c.selection || (c.use_manager ? 'manager' : 'round_robin');
  const kindOf = (c) => (c.closing === 'vote' ? 'vote' : (c.closing ? 'turn' : ''));
  const preset = choice('preset', [['', 'None: start from your settings']].concat(Object.entries(PRESETS).map(([k, p]) => [k, p.label])), DEFAULTS.preset || '');
  const rounds = number('rounds', DEFAULTS.rounds, 1, MAX_ROUNDS);
  const count = number('count', Math.min(LIMITS.participants, Math.max(1, DEFAULTS.participants.length || 2)), 1, LIMITS.participants);
  const selection = choice('selection', [
    ['round_robin', 'Round robin: everyone once per round, in order'],
    ['manager', 'A manager model picks who speaks next'],
    ['random', 'Random (never the same speaker twice in a row)'],
    ['mention', 'Mentioned first: @Alias in your message speaks first'],
    ['council', 'Council: everyone answers each round at once, unseen'],
  ], orderOf(DEFAULTS));
  const managerModel = picker(DEFAULTS.manager_model, 'manager_model', 'The first participant\'s model');
  const managerRow = field('Manager model', managerModel, 'mmc-wide');
  const passAllowed = el('input', { type: 'checkbox', checked: !!DEFAULTS.pass_allowed, name: 'pass_allowed', id: nextId('pass') });
  const peerReview = el('input', { type: 'checkbox', checked: !!DEFAULTS.peer_review, name: 'peer_review', id: nextId('review') });
  const peerRow = el('label', { className: 'mmc-check', for: peerReview.id }, [peerReview, 'Council: each ranks the others\' answers, unnamed, before the closing turn']);
  const moderator = el('input', { type: 'checkbox', checked: DEFAULTS.moderator === 'between_rounds', name: 'moderator', id: nextId('moderator') });
  const stopPhrase = el('input', { value: DEFAULTS.stop_phrase || '', placeholder: 'e.g. WE AGREE (empty: none)', name: 'stop_phrase', maxLength: LIMITS.stop_phrase });
  const maxSeconds = number('max_seconds', DEFAULTS.max_seconds || 0, 0, LIMITS.max_seconds, 'any');
  const maxTotal = number('max_total_tokens', DEFAULTS.max_total_tokens || 0, 0, LIMITS.max_total_tokens);
  const closingDefault = closingOf(DEFAULTS.closing);
  const closingKind = choice('closing_kind', [
    ['', 'Nothing: the last round ends it'], ['turn', 'A closing turn by a chosen model (verdict, summary…)'], ['vote', 'A vote of every participant, tallied'],
  ], kindOf(DEFAULTS));
  const closingModel = picker(closingDefault.model || '', 'closing_model', 'The first participant\'s model');
  const closingAlias = el('input', { value: closingDefault.alias || '', placeholder: 'Closing', name: 'closing_alias', maxLength: LIMITS.alias });
  const closingPrompt = el('textarea', { value: closingDefault.prompt || '', placeholder: 'Sum up and conclude', rows: 2, name: 'closing_prompt' });
  const closingLegend = el('legend');
  const closingBox = el('fieldset', {}, [closingLegend, el('div', { className: 'mmc-grid mmc-row' }, [
    field('Closing model', closingModel), field('Name', closingAlias), field('What it should do', closingPrompt, 'mmc-wide'),
  ])]);

  const rows = el('div');
  const rowInputs = [];
  const participantCount = () => Math.min(LIMITS.participants, Math.max(1, parseInt(count.value, 10) || 1));
  const paint = (box, legend, index, text) => {
    const [mark, colour] = MARKS[index % MARKS.length];
    box.style.setProperty('--mark', colour);
    legend.textContent = mark + ' ' + text;
  };
  const drawRows = () => {
    const n = participantCount();
    while (rowInputs.length < n) {
      const i = rowInputs.length;
      const d = DEFAULTS.participants[i] || {};
      const model = picker(d.model || '', 'model', 'Search your models…');
      const alias = el('input', { value: d.alias || '', placeholder: 'The model\'s name', name: 'alias', maxLength: LIMITS.alias });
      const persona = el('textarea', { value: d.system_message || '', placeholder: 'Who they are and how they talk', rows: 2, name: 'system_message' });
      const maxTokens = el('input', {
        type: 'number', min: 0, max: LIMITS.max_tokens, step: 1, value: d.max_tokens ?? '', name: 'max_tokens',
        placeholder: MAX_TOKENS ? MAX_TOKENS + ' (default)' : 'No limit', title: 'Empty: the default. 0: no limit.',
      });
      const temperature = el('input', {
        type: 'number', min: 0, max: 2, step: 'any', value: d.temperature ?? '', name: 'temperature',
        placeholder: 'Default', title: 'Empty: your Temperature setting. 0 to 2.',
      });
      const topP = el('input', {
        type: 'number', min: 0, max: 1, step: 'any', value: d.top_p ?? '', name: 'top_p',
        placeholder: 'Default', title: 'Empty: your Top-p setting. Above 0, at most 1.',
      });
      const legend = el('legend');
      const box = el('fieldset', {}, [legend, el('div', { className: 'mmc-grid mmc-row' }, [
        field('Model', model), field('Alias', alias), field('Max tokens per turn', maxTokens),
        field('Temperature', temperature), field('Top-p', topP),
        field('Persona', persona, 'mmc-wide'),
      ])]);
      box.dataset.participant = String(i + 1);
      paint(box, legend, i, 'Participant ' + (i + 1));
      rowInputs.push({ box, model, alias, persona, maxTokens, temperature, topP });
    }
    rows.replaceChildren(...rowInputs.slice(0, n).map((r) => r.box));
    paint(closingBox, closingLegend, n, 'Closing turn');  // the colour its heading will get
  };
  count.addEventListener('input', drawRows);
  // The field says what the cards show: 9 becomes 5 when the field is left.
  count.addEventListener('change', () => { count.value = participantCount(); drawRows(); });
  drawRows();
  const showRows = () => {
    managerRow.hidden = selection.value !== 'manager';
    peerRow.hidden = selection.value !== 'council';
    closingBox.hidden = closingKind.value !== 'turn';
  };
  selection.addEventListener('change', showRows);
  closingKind.addEventListener('change', showRows);
  showRows();

  // What the user typed or picked is theirs: a preset (or None: the user's settings) fills only
  // the fields nobody touched. Models stay as chosen.
  const touched = new Set();
  card.addEventListener('input', (e) => touched.add(e.target));
  card.addEventListener('change', (e) => { if (e.target !== preset) touched.add(e.target); });
  const put = (control, value) => {
    if (touched.has(control)) return;
    if (control.type === 'checkbox') control.checked = !!value;
    else control.value = value ?? '';
  };
  const fillFrom = (c, hints) => {
    put(rounds, c.rounds || 1);
    put(count, Math.min(LIMITS.participants, Math.max(hints.length, 1)));
    drawRows();
    put(selection, orderOf(c));
    put(passAllowed, c.pass_allowed);
    put(peerReview, c.peer_review);
    put(moderator, c.moderator === 'between_rounds');
    put(stopPhrase, c.stop_phrase || '');
    put(maxSeconds, c.max_seconds || 0);
    put(maxTotal, c.max_total_tokens || 0);
    put(closingKind, kindOf(c));
    put(closingAlias, closingOf(c.closing).alias || '');
    put(closingPrompt, closingOf(c.closing).prompt || '');
    rowInputs.slice(0, participantCount()).forEach((r, i) => {
      put(r.alias, (hints[i] || {}).alias || '');
      put(r.persona, (hints[i] || {}).system_message || '');
    });
    showRows();
  };
  // Keys the form does not show (peer review, a moderator…) go back as they came, or as the
  // chosen preset (None: the user's settings) sets them.
  const SHOWN = new Set(['rounds', 'selection', 'use_manager', 'manager_model', 'participants', 'pass_allowed',
    'stop_phrase', 'max_seconds', 'max_total_tokens', 'closing', 'preset', 'peer_review', 'moderator', RESOLVED_KEY]);
  const extraOf = (c) => Object.fromEntries(Object.entries(c || {}).filter(([k]) => !SHOWN.has(k)));
  let extra = extraOf(DEFAULTS);
  preset.addEventListener('change', () => {
    const p = PRESETS[preset.value];
    extra = { ...extraOf(DEFAULTS), ...extraOf(p ? p.config : SETTINGS) };
    if (p) fillFrom(p.config, p.participants);
    else fillFrom(SETTINGS, SETTINGS.participants || []);
  });

  const error = el('div', { className: 'mmc-error', role: 'status', 'aria-live': 'polite', textContent: PROBLEM });
  const cancel = el('button', { type: 'button', id: 'mmc-cancel', textContent: 'Cancel' });
  const skip = el('button', { type: 'button', id: 'mmc-skip', textContent: 'Use defaults', title: 'Your user valves (Settings → Valves)' });
  const start = el('button', { type: 'submit', id: 'mmc-start', className: 'mmc-primary', textContent: 'Start conversation' });
  const close = el('button', { type: 'button', id: 'mmc-close', className: 'mmc-close', textContent: '×', 'aria-label': 'Cancel setup' });
  const answer = () => {
    const n = participantCount();
    const managed = selection.value === 'manager';
    const closing = { model: closingModel.value, alias: closingAlias.value.trim(), prompt: closingPrompt.value.trim() };
    if (!closing.model && !closing.alias && !closing.prompt) closing.alias = 'Closing';  // chosen, all defaults
    return {
      ...extra,
      rounds: Number(rounds.value),
      selection: selection.value,
      use_manager: managed,
      manager_model: managed ? managerModel.value : '',
      participants: rowInputs.slice(0, n).map((r, i) => ({
        ...(DEFAULTS.participants[i] || {}),  // what a row holds beyond its fields (own sampling)
        model: r.model.value, alias: r.alias.value.trim(), system_message: r.persona.value,
        max_tokens: r.maxTokens.value === '' ? null : Number(r.maxTokens.value),
        temperature: r.temperature.value === '' ? null : Number(r.temperature.value),
        top_p: r.topP.value === '' ? null : Number(r.topP.value),
      })),
      pass_allowed: passAllowed.checked,
      peer_review: selection.value === 'council' && peerReview.checked,
      moderator: moderator.checked ? 'between_rounds' : '',
      stop_phrase: stopPhrase.value.trim(),
      max_seconds: Number(maxSeconds.value || 0),
      max_total_tokens: Number(maxTotal.value || 0),
      closing: closingKind.value === 'vote' ? 'vote' : (closingKind.value === 'turn' ? closing : null),
      preset: preset.value,
      [RESOLVED_KEY]: true,  // every value is as shown: the server applies no preset to it
    };
  };

  // The server's limits, checked here so a refused value is named next to its field and
  // nothing typed is lost.
  const whole = (input, lo, hi, empty) => {
    if (input.value === '' && empty) return true;
    const v = Number(input.value);
    return input.value !== '' && !input.validity.badInput && Number.isInteger(v) && v >= lo && v <= hi;
  };
  const named = (text) => !text || /[\p{L}\p{N}]/u.test(text);
  const problems = () => {
    const out = [];
    const need = (ok, control, text) => { if (!ok) out.push([control, text]); };
    need(whole(rounds, 1, MAX_ROUNDS), rounds, 'A whole number from 1 to ' + MAX_ROUNDS + '.');
    need(whole(count, 1, LIMITS.participants), count, 'From 1 to ' + LIMITS.participants + '.');
    const seen = new Map();
    rowInputs.slice(0, participantCount()).forEach((r, i) => {
      need(r.model.value, r.model.input, 'Choose a model for Participant ' + (i + 1) + '.');
      const alias = r.alias.value.trim();
      need(named(alias), r.alias, 'Give the name a letter or a digit.');
      const key = alias.toLowerCase().replace(/\s+/g, ' ');
      need(!key || !seen.has(key), r.alias, 'Participant ' + (seen.get(key) + 1) + ' has this name too.');
      if (key && !seen.has(key)) seen.set(key, i);
      need(r.persona.value.length <= LIMITS.persona, r.persona, 'At most ' + LIMITS.persona + ' characters (now ' + r.persona.value.length + ').');
      need(whole(r.maxTokens, 0, LIMITS.max_tokens, true), r.maxTokens, 'Empty, or a whole number from 0 to ' + LIMITS.max_tokens + '.');
      const within = (input, lo, hi, open) => input.value === '' || (!input.validity.badInput && Number(input.value) <= hi && (open ? Number(input.value) > lo : Number(input.value) >= lo));
      need(within(r.temperature, 0, 2, false), r.temperature, 'Empty, or from 0 to 2.');
      need(within(r.topP, 0, 1, true), r.topP, 'Empty, or above 0 and at most 1.');
    });
    need(stopPhrase.value.trim().length <= LIMITS.stop_phrase, stopPhrase, 'At most ' + LIMITS.stop_phrase + ' characters.');
    const secs = Number(maxSeconds.value || 0);
    need(!maxSeconds.validity.badInput && secs >= 0 && secs <= LIMITS.max_seconds, maxSeconds, 'From 0 to ' + LIMITS.max_seconds + ' seconds.');
    need(whole(maxTotal, 0, LIMITS.max_total_tokens, true), maxTotal, 'A whole number from 0 to ' + LIMITS.max_total_tokens + '.');
    if (closingKind.value === 'turn') {
      need(named(closingAlias.value.trim()), closingAlias, 'Give the name a letter or a digit.');
      need(closingPrompt.value.trim().length <= LIMITS.persona, closingPrompt, 'At most ' + LIMITS.persona + ' characters.');
    }
    return out;
  };
  const mark = (control, text) => {
    const message = control.mmcMessage;
    if (text) control.setAttribute('aria-invalid', 'true');
    else control.removeAttribute('aria-invalid');
    if (message) { message.textContent = text; message.hidden = !text; }
  };
  card.addEventListener('submit', (e) => {
    e.preventDefault();
    card.querySelectorAll('[aria-invalid]').forEach((node) => mark(node, ''));
    const found = problems();
    for (const [control, text] of found) mark(control, text);
    if (found.length) {
      error.textContent = found.length === 1 ? 'One field needs fixing.' : found.length + ' fields need fixing.';
      found[0][0].focus();
      return;
    }
    finish(answer());
  });
  cancel.addEventListener('click', () => finish(CANCELLED));
  close.addEventListener('click', () => finish(CANCELLED));
  // In /reconfigure "Use defaults" replaces the setup saved for this chat: it asks first.
  let replacing = false;
  skip.addEventListener('click', () => {
    if (!SAVED || replacing) return finish(null);
    replacing = true;
    skip.textContent = 'Replace it';
    error.textContent = "This replaces this chat's saved setup with your defaults (Settings → Valves). Click Replace it to go on, or Cancel to keep it.";
  });
  card.append(
    el('div', { className: 'mmc-head' }, [
      el('div', {}, [
        el('h2', { id: titleId, textContent: 'Multi-Model Conversation' }),
        el('p', { id: descId, textContent: 'Choose who takes part. This chat remembers the choice; /reconfigure changes it.' }),
      ]),
      close,
    ]),
    el('div', { className: 'mmc-body' }, [
      el('div', { className: 'mmc-grid mmc-top' }, [
        field('Preset (fills the fields; all stay editable)', preset),
        field('Rounds', rounds),
        field('Participants (1-5)', count),
      ]),
      el('h3', { textContent: 'Participants' }),
      rows,
      el('h3', { textContent: 'Who speaks next' }),
      el('div', { className: 'mmc-grid' }, [field('Order', selection, 'mmc-wide'), managerRow]),
      peerRow,
      el('label', { className: 'mmc-check', for: passAllowed.id }, [passAllowed, 'Participants may answer PASS to skip a turn']),
      el('label', { className: 'mmc-check', for: moderator.id }, [moderator, 'Ask me between rounds: I may add words, or end it']),
      el('h3', { textContent: 'When it ends' }),
      el('div', { className: 'mmc-grid mmc-top' }, [
        field('Stop phrase (anyone saying it ends it)', stopPhrase),
        field('Time budget, seconds (0: none)', maxSeconds),
        field('Token budget, all replies (0: none)', maxTotal),
        field('At the end', closingKind, 'mmc-wide'),
      ]),
      closingBox,
    ]),
    el('div', { className: 'mmc-foot' }, [error, cancel, skip, start]),
  );
  overlay.append(card);

  // Modal: Escape, Tab and every other key stay in the dialog. Open WebUI stops the request on
  // an Escape that reaches its chat input, so the dialog takes Escape first (window, capture).
  const focusables = () => [...card.querySelectorAll('button, input, select, textarea')]
    .filter((node) => !node.disabled && node.getClientRects().length);
  const onKey = (e) => {
    if (e.key === 'Escape') {
      e.preventDefault();
      e.stopImmediatePropagation();
      if (openPicker) openPicker.close();
      else finish(CANCELLED);
    } else if (e.key === 'Tab') {
      const nodes = focusables();
      const first = nodes[0];
      const last = nodes[nodes.length - 1];
      const at = document.activeElement;
      if (!card.contains(at) || at === (e.shiftKey ? first : last)) {
        e.preventDefault();
        (e.shiftKey ? last : first).focus();
      }
    }
  };
  let lastFocused = null;
  const onFocusIn = (e) => {
    if (overlay.contains(e.target)) lastFocused = e.target;
    else ((lastFocused && lastFocused.isConnected && lastFocused) || focusables()[0] || card).focus();
  };
  const onClose = (e) => {
    if (e.detail === MESSAGE_ID) finish(CANCELLED);
  };
  card.addEventListener('keydown', (e) => e.stopPropagation());  // the page's shortcuts wait
  let pressedOutside = false;
  overlay.addEventListener('mousedown', (e) => { pressedOutside = e.target === overlay; });
  overlay.addEventListener('click', (e) => {
    if (pressedOutside && e.target === overlay) finish(CANCELLED);
  });
  const returnFocus = document.activeElement;
  let timer = null;
  let done = false;
  const finish = (value) => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    window.removeEventListener('keydown', onKey, true);
    document.removeEventListener('focusin', onFocusIn, true);
    window.removeEventListener(CLOSE_EVENT, onClose);
    overlay.remove();
    style.remove();
    if (returnFocus && returnFocus.isConnected && returnFocus.focus) returnFocus.focus();
    resolve(value);
  };
  window.addEventListener('keydown', onKey, true);
  document.addEventListener('focusin', onFocusIn, true);
  window.addEventListener(CLOSE_EVENT, onClose);
  document.head.append(style);
  document.body.append(overlay);
  preset.focus();  // the first field: a stray Enter does not start the run
  // It times out after TIMEOUT_MS without a key, click or edit in it (and after OPEN_MS in
  // any case); a timed-out dialog is not remembered as the chat's setup.
  const openedAt = Date.now();
  const wait = () => {
    clearTimeout(timer);
    const left = Math.min(TIMEOUT_MS, OPEN_MS - (Date.now() - openedAt));
    timer = setTimeout(() => finish(TIMED_OUT), Math.max(0, left));
  };
  for (const kind of ['keydown', 'input', 'pointerdown', 'change']) overlay.addEventListener(kind, wait, true);
  wait();
});
"""

# The user valves' preset select (see SelectionChoice): built from the presets above, so it
# never offers one the setup refuses. Pipe.UserValves names it before it exists, hence the rebuild.
PresetChoice = Literal[("", *PRESETS)]
Pipe.UserValves.model_rebuild()
