"""The speaker guard and stop sequences of main 09aa316, frozen: the baseline bench/guard.py
and tests/test_guard_corpus.py measure the new guard against. Copied verbatim; do not edit."""

from __future__ import annotations

MAX_STOP_SEQUENCES = 4  # OpenAI's limit; most servers take more, none fewer
_LABEL_LEAD = " \t*_#>[("  # markup a model may put before an imitated `Name:` label
_LABEL_TAIL = " \t*_])"


def stop_sequences(own: str, aliases: list[str], user_name: str) -> list[str]:
    """`\nName:` for the speakers after `own` in turn order, then the user (at most four)."""
    if own in aliases:
        at = aliases.index(own)
        aliases = aliases[at + 1 :] + aliases[:at]
    names = [a for a in aliases if a != own] + [user_name]
    unique = [n for n in dict.fromkeys(n for n in names if n.strip())]
    return [f"\n{n}:" for n in unique[:MAX_STOP_SEQUENCES]]


class SpeakerGuard:
    """Filters a streamed reply: drops a leading `Name:` label and ends the reply at a line
    where the model starts speaking as another participant or the user.

    Holds back only the start of a line while it could still become such a label.
    """

    def __init__(self, own: str, others: list[str]) -> None:
        self._own = own.casefold()
        self._names = [n.casefold() for n in dict.fromkeys([own, *others]) if n.strip()]
        self._line = ""  # the start of the current line, held back
        self._holding = True  # at a line start, still deciding
        self._started = False  # some text went out already
        self._after_label = False  # a label was just dropped: its closing markup goes too
        self.stopped_by: str | None = None  # whose line ended the reply

    def feed(self, text: str) -> str:
        """The part of `text` that may be shown now ('' once the reply has ended)."""
        out: list[str] = []
        while text and self.stopped_by is None:
            cut = text.find("\n")
            piece, text = (text, "") if cut < 0 else (text[: cut + 1], text[cut + 1 :])
            if self._holding:
                self._line += piece
                piece = self._decide(final=cut >= 0)
            else:
                if self._after_label:  # the `**` or spaces of a dropped label, split off
                    piece = piece.lstrip(_LABEL_TAIL)
                    self._after_label = not piece
                self._holding = cut >= 0  # the next piece starts a line
            self._started = self._started or bool(piece.strip())
            out.append(piece)
        return "".join(out)

    def flush(self) -> str:
        """End of the reply: whatever is still held back goes out."""
        if self.stopped_by is not None or not self._line:
            return ""
        return self._decide(final=True)

    def _decide(self, final: bool) -> str:
        verdict, name, rest = self._label(self._line)
        if verdict == "maybe" and not final:
            return ""
        line, self._line = self._line, ""
        self._holding = line.endswith("\n")
        if verdict != "label":
            return line
        if name == self._own or not self._started:
            # Its own name, or a reply that opens with a label: drop the label.
            self._after_label = not rest and not self._holding
            return rest
        self.stopped_by = name
        return ""

    def _label(self, line: str) -> tuple[str, str, str]:
        """("label", name, text after it) | ("maybe", "", "") | ("no", "", "")."""
        body = line.lstrip(_LABEL_LEAD)
        low = body.casefold()
        maybe = False
        for name in self._names:
            if name.startswith(low.rstrip("\n")):
                maybe = True
                continue
            if not low.startswith(name):
                continue
            after = low[len(name) :].lstrip(_LABEL_TAIL)
            if after.startswith("said"):
                after = after[4:].lstrip(_LABEL_TAIL)
            if after.startswith(":"):
                rest = body[len(body) - len(after) + 1 :]
                return "label", name, rest.lstrip(_LABEL_TAIL)
            if "said".startswith(after.strip()):
                maybe = True
        return ("maybe", "", "") if maybe else ("no", "", "")
