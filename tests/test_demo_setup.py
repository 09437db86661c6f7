"""scripts/demo's choice of participants: an Ollama server's models when one is given."""

from __future__ import annotations

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "demo_setup", Path(__file__).parents[1] / "scripts" / "demo_setup.py"
)
demo_setup = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo_setup)

MODELS = [
    {"id": "mmc.Conversation-pipe", "pipe": {"type": "pipe"}},
    {"id": "scripted-optimist", "owned_by": "openai"},
    {"id": "scripted-engineer", "owned_by": "openai"},
    {"id": "qwen3:0.6b", "owned_by": "ollama"},
    {"id": "llama3.2:1b", "owned_by": "ollama"},
]


def test_with_an_ollama_server_its_models_take_part():
    chosen = demo_setup.choose_models(MODELS, [], "mmc.", "ollama")
    assert chosen == ["qwen3:0.6b", "llama3.2:1b", "qwen3:0.6b"]  # three seats, two models


def test_without_one_the_first_models_listed_do_and_never_the_pipe():
    chosen = demo_setup.choose_models(MODELS, [], "mmc.")
    assert chosen == ["scripted-optimist", "scripted-engineer", "qwen3:0.6b"]


def test_an_ollama_server_without_models_leaves_the_others():
    openai_only = [m for m in MODELS if m.get("owned_by") != "ollama"]
    chosen = demo_setup.choose_models(openai_only, [], "mmc.", "ollama")
    assert chosen == ["scripted-optimist", "scripted-engineer", "scripted-optimist"]


def test_models_asked_for_win():
    assert demo_setup.choose_models(MODELS, ["x", "y", "z"], "mmc.", "ollama") == ["x", "y", "z"]
