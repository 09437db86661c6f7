"""The demo's models: they answer in kind, with no model and no key (started by scripts/demo).

Each reply is written from what the request shows, as a participant would read it: the persona
and the turn's rules in the system prompt, the user's topic in the first user message, the
others' turns as `Name said: "…"`, the user's words between rounds, and what the turn asks (a
ranking, a vote, a closing or a chair's synthesis). Open WebUI's background tasks (title, tags,
follow-ups) and a manager's pick get their JSON or a name. The same request always gets the same
reply: choices are seeded by a hash of the request's messages.

The writer (`write`) is plain Python; the server is the test suite's scripted backend
(tests/backend.py) serving `demo_script()` for every model, so the tests' exact-output scripts
stay as they are. Run it with `python scripts/demo_models.py --port 8099`.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.backend import ModelScript, ScriptedBackend, serve_cli  # noqa: E402

MODELS = "scripted-optimist,scripted-engineer,scripted-critic"

# --- reading the request --------------------------------------------------------------------

_SHARED_RE = re.compile(
    r"You are (?P<alias>[^\n,]{1,64}), one participant in a group conversation with "
    r"(?P<others>[^\n]*?)\. Reply only as"
)
_CLOSING_RE = re.compile(
    r"You are (?P<alias>[^\n]{1,64})\. The group conversation between (?P<names>[^\n]*?) "
    r"has ended, and you close it\."
)
_LABEL_RE = re.compile(r'(?:^|\n\n)([^\n"]{1,80}?) said: "')
_TURN_RE = re.compile(r"This is turn (\d+) of (?:at most )?(\d+); (\d+) more")
_ROUND_RE = re.compile(r"Round (\d+) of (\d+)")
_RESPONSE_RE = re.compile(r'Response ([A-Z]):\n"(.*?)"(?=\n\nResponse [A-Z]:|\n\nRank them)', re.S)
_TABLE_ROW_RE = re.compile(r"^\| (\d+) \| ([^|]+?) \| (\d+) \|", re.M)
_CONTINUE_RE = re.compile(r"\n*\(Continue the conversation as [^\n]*\.\)\s*$")


def text_of(content: object) -> str:
    """OpenAI content (a string or a list of parts) as text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


@dataclass
class Said:
    """One thing said in the conversation: by a participant, or by the user (`user` True)."""

    who: str
    text: str
    user: bool = False


@dataclass
class Request:
    """What one participant's request shows: who it is, the others, what was said, the rules."""

    alias: str = ""
    others: list[str] = field(default_factory=list)
    persona: str = ""
    rules: str = ""
    said: list[Said] = field(default_factory=list)
    last: str = ""  # the last message's whole text (a ranking, vote or closing task is there)

    @property
    def topic(self) -> str:
        first = next((s for s in self.said if s.user), None)
        return first.text if first else ""

    def since_me(self) -> list[Said]:
        """What was said after this participant's own last turn."""
        idx = max((i for i, s in enumerate(self.said) if s.who == self.alias), default=-1)
        return self.said[idx + 1 :]


def split_labelled(text: str, participants: set[str]) -> list[Said]:
    """A user message as the pipe builds it: unlabelled user words, then `Name said: "…"` turns.

    A label naming no participant is the user's own (`Admin said: "…"`)."""
    text = _CONTINUE_RE.sub("", text)
    marks = list(_LABEL_RE.finditer(text))
    out: list[Said] = []
    head = text[: marks[0].start()] if marks else text
    if head.strip():
        out.append(Said("", head.strip(), user=True))
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        body = text[mark.end() : end]
        body = body[: body.rfind('"')] if '"' in body else body
        name = mark.group(1).strip()
        out.append(Said(name, body.strip(), user=name not in participants))
    return out


def read_request(messages: list[dict]) -> Request:
    """The participant's view parsed back: its alias and persona, the others, what was said."""
    system = text_of(messages[0].get("content")) if messages else ""
    req = Request()
    if match := _SHARED_RE.search(system):
        req.alias = match.group("alias").strip()
        req.others = [n.strip() for n in match.group("others").split(",") if n.strip()]
        head = system[: match.start()]
        cut = min(
            (i for i in (head.find("Round "), head.find("This is turn ")) if i >= 0), default=-1
        )
        req.persona, req.rules = (head[:cut], head[cut:]) if cut >= 0 else (head, "")
    elif match := _CLOSING_RE.search(system):
        req.alias = match.group("alias").strip()
        req.others = [n.strip() for n in match.group("names").split(",") if n.strip()]
        req.rules = system[match.end() :]
    else:
        req.persona = system  # an admin's own shared instruction: the persona is in there
    names = {req.alias, *req.others}
    for message in messages[1:]:
        content = text_of(message.get("content"))
        if message.get("role") == "assistant":
            req.said.append(Said(req.alias, content.strip()))
        elif message.get("role") == "user":
            req.said.extend(split_labelled(content, names))
    req.last = text_of(messages[-1].get("content")) if messages else ""
    return req


# --- the topic ----------------------------------------------------------------------------

_ASKS_RE = re.compile(
    r"^(?:should|shall|can|could|would|do|does|must)\s+(?:we|i|you|they|our team|the team)\s+"
    r"(?P<act>.+)$",
    re.I,
)
_HOW_RE = re.compile(r"^how (?:do|can|should|would|could) (?:we|i|you) (?P<act>.+)$", re.I)
_WHAT_RE = re.compile(r"^what(?:'s| is| are) (?P<thing>.+)$", re.I)
_OR_RE = re.compile(
    r"^(?:(?:should|shall|do|would) (?:we|i|you) (?:\w+ )?)?(?P<a>[^,?]+?) or (?P<b>[^,?]+?)$", re.I
)
STOPWORDS = set(
    "the a an and or of to in on for with our we i you is are be it this that what how should "
    "can do does would could which who why when where best first about your my their them".split()
)


@dataclass(frozen=True)
class Topic:
    """The user's question, read once: a noun phrase for it, a word to pin it on, the options."""

    text: str
    idea: str  # "the plan to rewrite our billing service in Rust"
    focus: str  # "Rust"
    options: tuple[str, str]  # what a vote chooses between

    @classmethod
    def of(cls, text: str) -> Topic:
        first = re.split(r"(?<=[.?!])\s|\n", text.strip(), maxsplit=1)[0].strip()
        core = first.rstrip("?.! ").strip() or "this"
        core = re.sub(r"^@\S+\s*,?\s*", "", core)  # "@Linus you go first: …" → the question
        core = re.sub(r"^(?:[^:]{0,40}):\s+", "", core) if ":" in core[:42] else core
        if match := _OR_RE.match(core):
            options = (_cap(match.group("a")), _cap(match.group("b")))
        elif _ASKS_RE.match(core) or core.lower().startswith(("is ", "are ", "will ")):
            options = ("Yes, with a pilot first", "Not yet")
        else:
            options = ("Go ahead", "Wait")
        if match := _ASKS_RE.match(core):
            idea = f"the plan to {match.group('act')}"
        elif match := _HOW_RE.match(core):
            idea = f"a plan to {match.group('act')}"
        elif match := _WHAT_RE.match(core):
            idea = match.group("thing")
        else:
            idea = f"“{core}”"
        return cls(text, idea, _focus(core), options)


def _cap(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:]


def _focus(core: str) -> str:
    """The name the topic turns on: its last run of capitalised words after the first word
    ("GitHub Actions"), else its longest plain word."""
    words = re.findall(r"[A-Za-z][\w+#.-]*", core)
    runs: list[list[str]] = []
    for i, word in enumerate(words[1:], 1):
        if word[0].isupper() and word.lower() not in STOPWORDS:
            if runs and runs[-1][-1] == words[i - 1]:
                runs[-1].append(word)
            else:
                runs.append([word])
    if runs:
        return " ".join(runs[-1]).rstrip(".")
    plain = [w for w in words if w.lower() not in STOPWORDS]
    return max(plain, key=len, default="it")


# --- voices -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Voice:
    """How one kind of persona talks: its opening, how it answers the last speaker, its vote."""

    name: str
    keys: tuple[str, ...]  # words in a persona that pick this voice
    opens: tuple[str, ...]  # first words on the topic ({idea}, {focus})
    replies: tuple[str, ...]  # answering the previous speaker ({prev}, {gist}, {idea})
    agrees: float  # how often it builds on the previous speaker rather than disagrees
    builds: tuple[str, ...]  # agreeing lead-ins
    disputes: tuple[str, ...]  # disagreeing lead-ins
    vote: int  # which option it votes for (0 or 1)
    why_vote: str
    intent: str  # its reasoning's last clause


VOICES = (
    Voice(
        "security",
        ("security", "privacy", "risk"),
        (
            "From a security angle, {idea} changes who can touch what. Every new service is "
            "new attack surface, so I want the risk written down with an owner: secrets, "
            "access, and what happens to customer data during the switch.",
        ),
        (
            "The risk nobody has owned yet is the data migration: two systems holding customer "
            "records at once, with two sets of access rules.",
            "Before anything ships, someone has to own the secrets and the access rules; today "
            "nobody does.",
            "Every shortcut in a migration becomes an attack path later, so the risk review "
            "comes first, not last.",
        ),
        0.5,
        ("{prev} makes a fair point about {gist}, and I'd add one condition.",),
        ("{prev} skips the risk in {gist}.",),
        1,
        "the risk has no owner yet.",
        "name the risk and who owns it",
    ),
    Voice(
        "clarity",
        ("clarity", "maintainab", "readab"),
        (
            "Whatever we decide about {idea}, the next person to maintain it must be able to "
            "read it. I'd judge every option by one question: can a new hire fix a bug in it "
            "in their first week?",
        ),
        (
            "A plan only the author can read is not maintainable; write the one-page design "
            "note before the first line of code.",
            "If we can't explain the design on one page, we don't understand it well enough "
            "to maintain it.",
            "Readable beats clever: the next maintainer will thank us, or curse us.",
        ),
        0.7,
        ("I agree with {prev} on {gist}, and clarity is the cheap way to get there.",),
        ("{prev}'s point on {gist} is hard to follow as written.",),
        0,
        "it stays readable if we write it down first.",
        "ask whether the next maintainer could read it",
    ),
    Voice(
        "analyst",
        ("careful", "reasoning shown", "correctness", "edge case", "analy", "lead the interview"),
        (
            "Step by step: first, what problem does {idea} solve, and how often does it hurt "
            "today? Second, what would it cost to measure that for a month? Third, which edge "
            "cases break the obvious answer? On balance, the evidence favours a small pilot "
            "over a big decision.",
        ),
        (
            "Taking the arguments in order, the strongest one is the measurable one; the rest "
            "are guesses until a pilot gives us data.",
            "On balance the case is still open: the costs are concrete, the benefits are "
            "estimates.",
            "The edge cases are where the estimates break, so the pilot should start there.",
        ),
        0.6,
        ("{prev}'s reasoning on {gist} holds up, step by step.",),
        ("{prev}'s argument on {gist} has a gap in the middle step.",),
        0,
        "a pilot gives us the data the rest is missing.",
        "weigh the arguments in order",
    ),
    Voice(
        "critic",
        (
            "blunt",
            "weak",
            "reviewer",
            "contrarian",
            "skeptic",
            "against the motion",
            "test the obvious",
        ),
        (
            "The weakest argument for {idea} is that it sounds modern. That's not a reason. "
            "Show me the failure it prevents, what it costs to keep running, and who maintains "
            "it when the enthusiasm wears off.",
            "Let me test the obvious answer: most teams that chase {focus} would get more from "
            "fixing what they already run. Until someone shows the numbers, this is taste, not "
            "evidence.",
        ),
        (
            "Nobody has shown a number yet, and a plan without one is a wish.",
            "Strip the adjectives out and there is no evidence left in it.",
            "Enthusiasm is not a plan; show me what breaks today and what it costs us.",
            "Every rewrite looks cheap from the outside; the weakest part is always the estimate.",
        ),
        0.15,
        ("Fine, {prev} has a point on {gist}.",),
        (
            "The weakest claim so far is {prev}'s: {gist}.",
            "{prev} is arguing {gist} as if it were settled. It isn't.",
        ),
        1,
        "no one has shown it pays for itself.",
        "name the weakest argument and why",
    ),
    Voice(
        "engineer",
        (
            "pragmatic",
            "engineer",
            "cost",
            "build on",
            "make them work",
            "expert",
            "precise",
            "candidly",
        ),
        (
            "Before we commit to {idea}, what does it cost? I'd put two engineers on a "
            "two-week spike, pick one measurable target (latency, error rate or hours lost to "
            "incidents) and let the numbers decide.",
            "Precisely: {idea} is a two-to-three-month job for a small team, most of it in "
            "migration and testing rather than new code. The cheap way to find out is a "
            "two-week spike on the part that hurts most.",
        ),
        (
            "So let's make it testable: a two-week spike, one number to beat, and a date when "
            "we stop if it doesn't.",
            "The cheapest next step is a spike: two weeks, one metric, and a written stop rule.",
            "If the spike misses its one metric, we stop and keep the old system; that caps "
            "what we can lose.",
            "Measure first: a week of profiling tells us where the time goes before anyone "
            "writes new code.",
        ),
        0.75,
        ("{prev} is right about {gist}.", "I'll build on {prev}'s point about {gist}."),
        ("I'd push back on {prev} about {gist}.",),
        0,
        "a two-week spike costs little and settles it.",
        "ask what it costs and how to test it",
    ),
    Voice(
        "optimist",
        ("optimis", "bold", "inventor", "dream", "unusual", "for the motion"),
        (
            "I'm for {idea}. Done well, it pays back every week after: fewer surprises, "
            "faster changes and a team that enjoys the work. Aim high, then cut scope, not "
            "the other way round.",
            "Yes to {idea}! Bold moves like this are how teams get ahead; start with the part "
            "that hurts most and let the first win fund the rest.",
        ),
        (
            "Caution has a cost too: every month we wait, the old way gets harder to leave.",
            "Imagine where we are in a year if this works; that upside is worth a bold start.",
            "The teams that get ahead are the ones that try; a bold pilot is a cheap ticket.",
            "Small bets, made boldly and often, beat one big careful bet made too late.",
        ),
        0.5,
        ("{prev} is right about {gist}, and that's exactly why I'd move now.",),
        (
            "I hear {prev} on {gist}, but that's an argument for starting small, not for "
            "standing still.",
        ),
        0,
        "the upside is large and a pilot limits the downside.",
        "argue for the bold version",
    ),
)
# Without a matching persona, a model's name picks its voice (the demo's three models).
BY_MODEL = {"optimist": "optimist", "engineer": "engineer", "critic": "critic"}

# What a turn argued, in a few words, by the words it used (its "gist" for the next speaker).
GISTS = (
    (
        r"weakest|not a reason|no evidence|taste, not|a wish|adjectives|show me|not a plan",
        "the missing evidence",
    ),
    (r"risk|security|attack|secrets", "the risk nobody owns yet"),
    (r"maintain|read it|readable|design|one page", "keeping it readable for whoever comes next"),
    (r"step by step|in order|on balance|edge case", "the pilot the evidence points to"),
    (r"spike|measur|one metric|one number|testable", "a short, measured trial first"),
    (r"bold|aim high|get ahead|upside|caution has a cost", "moving boldly while the pain is fresh"),
)


# The claim a voice never agrees with.
OPPOSED = {"optimist": "the missing evidence", "critic": "moving boldly while the pain is fresh"}


def voice_for(persona: str, model: str) -> Voice:
    """The voice a persona asks for; else the one the model's name suggests; else the engineer."""
    lowered = persona.lower()
    for voice in VOICES:
        if any(key in lowered for key in voice.keys):
            return voice
    by_name = next((v for k, v in BY_MODEL.items() if k in model), "engineer")
    return next(v for v in VOICES if v.name == by_name)


def gist(text: str) -> str:
    """What a turn argued, in a few words: the claim of its last sentence that makes a known
    one (its own point comes after what it says of others), else its first words."""
    sentences = re.split(r"(?<=[.?!])\s", text.strip())
    for sentence in reversed(sentences):
        for pattern, words in GISTS:
            if re.search(pattern, sentence.lower()):
                return words
    return "“" + " ".join(sentences[0].split()[:8]).rstrip(".,;:!?") + "”"


# --- writing a turn ------------------------------------------------------------------------


def seeded(model: str, messages: list[dict]) -> random.Random:
    """The same request always makes the same choices."""
    digest = hashlib.sha256(json.dumps([model, messages], sort_keys=True).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _fill(template: str, **values: str) -> str:
    text = template.format(**values)
    return text[:1].upper() + text[1:]


def names_me(words: str, alias: str) -> bool:
    """Whether the user's words address this participant (`@Ada`, or `Ada` as a word)."""
    return bool(alias) and re.search(rf"(?<!\w)@?{re.escape(alias)}(?!\w)", words, re.I) is not None


def answer_moderator(words: str, voice: Voice, topic: Topic, rng: random.Random) -> str:
    """A direct answer to what the user asked of this participant, by what it asks for."""
    lowered = words.lower()
    if "risk" in lowered:
        return (
            "The one risk I'd name: the data migration, with two systems live at once and "
            "no clean way back if the numbers go wrong."
        )
    if re.search(r"cost|price|budget|how much|number|estimate", lowered):
        weeks = rng.choice((6, 8, 10))
        return (
            f"My number: about {weeks} engineer-weeks, two of them for the spike, and "
            "we stop after the spike if it misses its target."
        )
    if "example" in lowered:
        return (
            f"A concrete example: the slowest report in {topic.focus} today, rebuilt "
            "in the spike and timed against the old one."
        )
    if re.search(r"short|brief|one sentence|summar", lowered):
        return f"In one sentence: {voice.why_vote[:1].upper()}{voice.why_vote[1:]}"
    return f"My answer: {voice.replies[0]}"


def turn_reply(req: Request, voice: Voice, topic: Topic, rng: random.Random) -> str:
    """A conversation turn in the voice: the user's words first if they are new, then the
    previous speaker by name (agreeing or not), then one more point; a hand-off in a chat of
    @mentions."""
    new = req.since_me()
    words = next((s for s in reversed(new) if s.user), None)
    words = words if words and words.text != topic.text else None
    prev = next((s for s in reversed(new) if not s.user and s.who != req.alias), None)
    parts: list[str] = []
    if words and names_me(words.text, req.alias):
        who = words.who or "you"
        lead = "You asked me" if who == "you" else f"{who}, you asked me"
        parts.append(f"{lead}, so here it is. {answer_moderator(words.text, voice, topic, rng)}")
    elif words:
        named = [n for n in req.others if names_me(words.text, n)]
        if named:
            aside = rng.choice(
                (
                    "That question was for {n}; I'll add one line.",
                    "{n} will answer that; a word from me first.",
                )
            )
            parts.append(aside.format(n=named[0]))
        else:
            parts.append(
                f"On your point, “{_short(words.text, 12)}”: "
                f"{answer_moderator(words.text, voice, topic, rng)}"
            )
    first_turn = all(s.who != req.alias for s in req.said)
    if prev:
        claim = gist(prev.text)
        agrees = rng.random() < voice.agrees and claim != OPPOSED.get(voice.name)
        lead = rng.choice(voice.builds if agrees else voice.disputes)
        parts.append(_fill(lead, prev=prev.who, gist=claim))
    if first_turn or not parts:
        opens = [_fill(o, idea=topic.idea, focus=topic.focus) for o in voice.opens]
        parts.append(rng.choice(fresh(opens, req) or opens))
    elif prev:
        parts.append(rng.choice(fresh(list(voice.replies), req) or [_held(req, voice)]))
    text = " ".join(parts)
    handoff = _handoff(req, topic)
    return f"{text}\n\n{handoff}" if handoff else text


def fresh(lines: list[str], req: Request) -> list[str]:
    """The lines nobody has said yet in this conversation (a repeated line is an echo the
    pipe would cut)."""
    said = " ".join(s.text for s in req.said)
    return [line for line in lines if line not in said]


def _held(req: Request, voice: Voice) -> str:
    """When every line of the voice is spent: its position, dated by the turn."""
    turn = _TURN_RE.search(req.rules)
    when = f"At turn {turn.group(1)}" if turn else "Still"
    return f"{when}, my view holds: {voice.why_vote}"


def _short(text: str, words: int) -> str:
    kept = text.split()
    return " ".join(kept[:words]).rstrip(".,;:!?") + ("…" if len(kept) > words else "")


def _handoff(req: Request, topic: Topic) -> str:
    """In a chat of @mentions, the turn ends by handing over to someone who has not spoken."""
    if "@" not in topic.text:
        return ""
    start = max((i for i, s in enumerate(req.said) if s.user), default=0)
    spoke = {s.who for s in req.said[start:] if not s.user} | {req.alias}
    waiting = [n for n in req.others if n not in spoke]
    return f"@{waiting[0]}, what would you change?" if waiting else ""


def should_pass(req: Request, rng: random.Random) -> bool:
    """PASS only where the rules allow it and never right after the user's words between
    rounds (everyone answers those): on the very last turn of a conversation past its first
    round, or now and then in a later round."""
    if "answer only the word PASS" not in req.rules:
        return False
    if any(s.user and s.text != req.topic for s in req.since_me()):
        return False
    turn = _TURN_RE.search(req.rules)
    rnd = _ROUND_RE.search(req.rules)
    if not turn or not rnd or int(rnd.group(1)) < 2:
        return False
    return int(turn.group(3)) == 0 or rng.random() < 0.15


def reasoning(req: Request, voice: Voice, topic: Topic) -> str:
    """A few words of thinking before the turn, shown in its reasoning block."""
    new = [s for s in req.since_me() if not s.user and s.who != req.alias]
    heard = f" {new[-1].who} just argued {gist(new[-1].text)}." if new else ""
    who = req.alias or "a participant"
    return f"The question is {topic.idea}.{heard} As {who}, I should {voice.intent}."


# --- review, vote, closing ----------------------------------------------------------------

CONCRETE = re.compile(r"\d|spike|measur|metric|test|pilot|risk|owner|cost|week")


REVIEW_LEADS = {
    "critic": "None of these settles it, but some come closer than others.",
    "optimist": "Good answers all round; here is how I'd order them.",
    "analyst": "Judged on accuracy first, then on insight:",
}


def _merit(text: str) -> str:
    lowered = text.lower()
    if re.search(r"\d|week", lowered):
        return "puts a number and a date on it"
    if re.search(r"spike|pilot|test|measur", lowered):
        return "says how we would find out"
    if "risk" in lowered:
        return "names the risk"
    return "is the clearest"


def _flaw(text: str) -> str:
    lowered = text.lower()
    if re.search(r"taste|evidence|not a reason", lowered):
        return "argues against more than it proposes"
    if re.search(r"bold|aim high|upside|get ahead", lowered):
        return "is conviction more than a plan"
    return "stays general"


def review_reply(req: Request, voice: Voice, rng: random.Random) -> str:
    """A ranking of the anonymous answers, the most concrete first, with a sentence on why."""
    answers = dict(_RESPONSE_RE.findall(req.last))
    if not answers:
        return "I cannot see the answers to rank."
    score = {x: len(CONCRETE.findall(text.lower())) + rng.random() for x, text in answers.items()}
    order = sorted(score, key=lambda x: -score[x])
    best, worst = order[0], order[-1]
    why = [REVIEW_LEADS.get(voice.name, "")]
    why.append(f"Response {best} is the strongest: it {_merit(answers[best])}.")
    if len(order) > 1:
        why.append(f"Response {worst} {_flaw(answers[worst])}.")
    return " ".join(w for w in why if w) + f"\n\nRANKING: {', '.join(order)}"


def vote_reply(req: Request, voice: Voice, topic: Topic) -> str:
    choice = topic.options[voice.vote]
    return f"VOTE: {choice}\nBecause {voice.why_vote}"


def closing_reply(req: Request, topic: Topic) -> str:
    """The closing turn: each participant's line by name, then where they agree and differ;
    as the chair of a council, built on the peer ranking."""
    last_words = {}
    for s in req.said:
        if not s.user and s.who in req.others and s.text != "PASS" and "RANKING:" not in s.text:
            last_words[s.who] = s.text
    ranked = [(name.strip(), int(points)) for _, name, points in _TABLE_ROW_RE.findall(req.rules)]
    lines = []
    if ranked and "chair" in req.rules.lower():
        (top, points), rest = ranked[0], ranked[1:]
        lines.append(
            f"**Synthesis.** The council ranked {top}'s answer first ({points} points), and "
            f"its core stands: {gist(last_words.get(top, ''))}."
        )
        for name, _ in rest:
            said = gist(last_words.get(name, ""))
            verb = "pushes back with" if said == "the missing evidence" else "adds"
            lines.append(f"{name} {verb} {said}.")
        lines.append(
            f"Where the council disagreed: how much evidence {topic.idea} needs before "
            "anyone commits. My answer: run the short trial, keep its result honest, and "
            "decide on the number, not the mood."
        )
        return " ".join(lines)
    for name in req.others:
        if name in last_words:
            lines.append(f"- **{name}**: {gist(last_words[name])}")
    claims = {gist(t) for t in last_words.values()}
    agree = (
        "everyone wants a short, measured trial first"
        if "a short, measured trial first" in claims
        else "the question deserves evidence"
    )
    return (
        "\n".join(lines) + f"\n\nThey agree that {agree}; they differ on how bold the first "
        f"step should be. Conclusion: on {topic.idea}, start with a pilot and decide on its "
        "numbers."
    ).strip()


# --- manager and background tasks ---------------------------------------------------------


def manager_reply(prompt: str) -> str:
    """A manager's pick: someone the last turn hands over to (`@Name`), else whoever has waited
    longest (never spoken first, in the listed order), never the last speaker."""
    names = re.search(r"Choose exactly one of: ([^\n]+)", prompt)
    if not names:
        return ""
    choices = [n.strip() for n in names.group(1).split(",") if n.strip()]
    last = re.search(r"The last speaker was '([^']*)'", prompt)
    last_name = last.group(1) if last else ""
    history = prompt.split("Conversation so far:", 1)[-1].split("The last speaker was", 1)[0]
    lines = history.strip().splitlines()
    handed = [n for n in choices if n != last_name and lines and f"@{n}" in lines[-1]]
    if handed:
        return handed[0]
    spoke = {n: i for i, line in enumerate(lines) for n in choices if line.startswith(f"{n}:")}
    waiting = [n for n in choices if n != last_name] or choices
    return min(waiting, key=lambda n: spoke.get(n, -1))


def task_reply(prompt: str) -> str:
    """Open WebUI's background tasks: a title, tags, follow-up questions (JSON); search queries
    are never needed."""
    history = prompt.split("<chat_history>", 1)[-1]
    first = re.search(r"USER:\s*(.+)", history)
    topic = Topic.of(first.group(1) if first else "")
    if '"title"' in prompt:
        subject = re.sub(r"^(?:the plan to|how to) ", "", topic.idea.strip("“”"))
        title = "💬 " + _cap(_short(subject, 6).rstrip("…"))
        return json.dumps({"title": title}, ensure_ascii=False)
    if '"tags"' in prompt:
        tags = ["Decision making", _cap(topic.focus), "Engineering"]
        return json.dumps({"tags": tags}, ensure_ascii=False)
    if '"follow_ups"' in prompt:
        return json.dumps(
            {
                "follow_ups": [
                    "What would a two-week pilot look like?",
                    "Which risk should we address first?",
                    "How would we measure success?",
                ]
            },
            ensure_ascii=False,
        )
    if '"queries"' in prompt:
        return json.dumps({"queries": []})
    return ""


# --- the writer ---------------------------------------------------------------------------


def write(model: str, messages: list[dict]) -> str:
    """The demo model's whole reply to one chat request, reasoning first in `<think>` tags."""
    rng = seeded(model, messages)
    system = text_of(messages[0].get("content")) if messages else ""
    prompt = text_of(messages[-1].get("content")) if messages else ""
    if "### Task:" in prompt:
        return task_reply(prompt)
    if "group chat manager" in system or "Choose exactly one of:" in prompt:
        return manager_reply(prompt)
    req = read_request(messages)
    voice = voice_for(req.persona, model)
    topic = Topic.of(req.topic)
    if "and you close it." in system:
        return closing_reply(req, topic)
    if "RANKING:" in prompt and "Response A:" in prompt:
        return review_reply(req, voice, rng)
    if "Cast your vote" in prompt:
        return vote_reply(req, voice, topic)
    if should_pass(req, rng):
        return "PASS"
    thought = reasoning(req, voice, topic)
    return f"<think>\n{thought}\n</think>\n\n{turn_reply(req, voice, topic, rng)}"


def reply(record) -> str:
    """The scripted backend's reply hook: one recorded request in, the demo's reply out."""
    return write(record.model, record.messages)


def demo_script(delay: float = 0.04) -> ModelScript:
    """What every demo model runs: the writer, streamed a word at a time."""
    return ModelScript(reply=reply, delay=delay)


def main(argv: list[str] | None = None) -> None:
    def make(scripts: dict, default: ModelScript, port: int) -> ScriptedBackend:
        script = demo_script(default.delay)
        return ScriptedBackend({m: script for m in scripts}, default=script, port=port)

    serve_cli(argv, make, MODELS, "demo models", __doc__)


if __name__ == "__main__":
    main()
