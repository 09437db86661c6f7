"""Issue 29.4: a preset chosen in the user valves sets its own rounds (council 1, debate 2,
interview 4), unless the user set *Rounds* themselves; the dialog opens with those rounds.

How the user "set" it: Open WebUI saves only the valves a user set (a field left at
*Default* is sent as null and dropped, then stored with `model_dump(exclude_unset=True)`,
routers/functions.py) and builds `UserValves(**stored)` for each request (functions.py), so
a set value is in `model_fields_set` and the default 3 is not.
"""

from __future__ import annotations

import json
import re

import pytest

import multi_model_conversation as mmc
from tests.fakes import PipeHarness


def as_the_host_stores(**form) -> object:
    """The valves as a request gets them after the user saved `form` (None: left at Default)."""
    saved = mmc.Pipe.UserValves(**{k: v for k, v in form.items() if v is not None})
    stored = json.loads(json.dumps(saved.model_dump(exclude_unset=True)))
    return mmc.Pipe.UserValves(**stored)


def rounds_of(valves) -> int:
    return mmc.parse_config(mmc.config_from_user_valves(valves), 20).rounds


MODELS = {"NUM_PARTICIPANTS": 2, "Participant1Model": "m1", "Participant2Model": "m2"}


@pytest.mark.parametrize(("preset", "rounds"), [("council", 1), ("debate", 2), ("interview", 4)])
def test_a_preset_in_the_valves_sets_its_rounds(preset, rounds):
    assert mmc.PRESETS[preset]["config"]["rounds"] == rounds
    valves = as_the_host_stores(Preset=preset, ROUNDS_PER_CONVERSATION=None, **MODELS)
    assert rounds_of(valves) == rounds


def test_what_must_not_change_rounds_the_user_set_win_and_no_preset_keeps_the_valve():
    assert rounds_of(as_the_host_stores(Preset="debate", ROUNDS_PER_CONVERSATION=3, **MODELS)) == 3
    assert rounds_of(as_the_host_stores(Preset="council", ROUNDS_PER_CONVERSATION=5, **MODELS)) == 5
    assert rounds_of(as_the_host_stores(ROUNDS_PER_CONVERSATION=5, **MODELS)) == 5
    assert rounds_of(as_the_host_stores(**MODELS)) == 3  # the valve's default
    assert rounds_of(mmc.Pipe.UserValves(**MODELS)) == 3


def script_value(event: dict, name: str):
    match = re.search(rf"^const {name} = (.*);$", event["data"]["code"], re.MULTILINE)
    return json.loads(match.group(1))


class Answers:
    def __init__(self, answer):
        self.answer = answer
        self.calls: list[dict] = []

    async def __call__(self, event: dict):
        self.calls.append(event)
        return self.answer


async def test_a_debate_from_the_valves_runs_two_rounds_and_the_dialog_opens_on_two():
    h = PipeHarness()
    valves = as_the_host_stores(Preset="debate", ROUNDS_PER_CONVERSATION=None, **MODELS)

    await h.run("Tea or coffee?", user_valves=valves)  # no dialog: the valves run

    speakers = [r["model"] for r in h.host.requests if r["stream"]]
    assert speakers == ["m1", "m2", "m1", "m2", "m1"]  # 2 rounds, then the Judge (m1)

    dialog = Answers({"cancelled": True})
    await h.run("Tea?", chat_id="chat-2", event_call=dialog, user_valves=valves)
    assert script_value(dialog.calls[0], "DEFAULTS")["rounds"] == 2
    # Preset "None" in the dialog puts the user's own valves back: their rounds, not none.
    assert script_value(dialog.calls[0], "SETTINGS")["rounds"] == 3
