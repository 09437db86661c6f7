"""The house rules for the file and the README that a reader relies on to find their way."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import multi_model_conversation as mmc

ROOT = Path(__file__).parents[1]
SOURCE = Path(mmc.__file__).read_text()
TREE = ast.parse(SOURCE)
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def test_every_function_is_under_80_lines():
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
        for node in ast.walk(TREE)
        if isinstance(node, FUNCTIONS) and node.end_lineno - node.lineno + 1 >= 80
    ]
    assert long == []


def test_pipe_comes_last_and_what_run_and_pipe_use_comes_before_them():
    """Sections in data-flow order: the turn loop and the entry point come after their helpers."""
    top = [node for node in TREE.body if isinstance(node, (*FUNCTIONS, ast.ClassDef))]
    assert top[-1].name == "Pipe", f"defined after Pipe: {top[-1].name}"
    position = {node.name: i for i, node in enumerate(top)}
    late = [
        f"{name} after {node.name}"
        for node in top
        if node.name in ("Run", "Pipe")
        for name in sorted({n.id for n in ast.walk(node) if isinstance(n, ast.Name)})
        if position.get(name, -1) > position[node.name]
    ]
    assert late == []


def test_readme_sections_come_in_the_teams_order():
    """What it is, the two commands, installing it, the valves, then how it behaves."""
    headings = re.findall(r"^## (.+)$", (ROOT / "README.md").read_text(), re.MULTILINE)
    wanted = ["The two commands", "Install it", "Valves", "How it behaves"]
    found = [next(i for i, h in enumerate(headings) if h.startswith(w)) for w in wanted]
    assert found == sorted(found), headings
    assert found[0] == 0, "the first screen says what it is, then the commands"


def test_every_valve_is_in_the_readme_with_its_default():
    readme = (ROOT / "README.md").read_text()
    for name, info in mmc.Pipe.Valves.model_fields.items():
        row = re.search(rf"^\| `{name}` \| ([^|]+) \| ([^|]+) \|", readme, re.MULTILINE)
        assert row, f"{name} is not in the README's valves table"
        assert row.group(1).strip() == info.title, f"{name}: the title Open WebUI shows"
        shown = row.group(2).strip()
        default = info.default
        if isinstance(default, bool):
            assert shown == ("on" if default else "off"), name
        elif isinstance(default, float):
            assert abs(float(shown) - default) < 1e-3, name
        else:
            assert shown == str(default), name


def test_every_user_valve_is_in_the_readme_by_name_and_title():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("User valves (") : readme.index("## How it behaves")]
    for name, info in mmc.Pipe.UserValves.model_fields.items():
        numbered = re.sub(r"Participant[2-5]", "Participant1", name)
        assert f"`{numbered}`" in table, f"{name} is not in the README's user valves table"
        assert info.title.split(": ")[-1] in table, (name, info.title)  # "Closing turn: name"


def test_the_functions_editor_saves_the_file_unchanged():
    """Open WebUI's editor runs `black.format_str(code, mode=black.Mode())` before it saves
    (`/api/v1/utils/code/format`): the file must already be in that form, or what an admin
    saves differs from the release on every long line."""
    import black

    assert black.format_str(SOURCE, mode=black.Mode()) == SOURCE


def test_the_valves_are_classes_inside_pipe_one_field_per_line_with_title_and_description():
    """Where every admin looks for what can be tuned: `class Valves(BaseModel)` and
    `class UserValves(BaseModel)` inside `Pipe`, each field declared with its title and text."""
    pipe = next(n for n in TREE.body if isinstance(n, ast.ClassDef) and n.name == "Pipe")
    inner = {n.name: n for n in pipe.body if isinstance(n, ast.ClassDef)}
    for name, model in (("Valves", mmc.Pipe.Valves), ("UserValves", mmc.Pipe.UserValves)):
        assert name in inner, f"{name} is not declared inside Pipe"
        declared = [
            n.target.id
            for n in inner[name].body
            if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
        ]
        assert declared == list(model.model_fields), name
        for field, info in model.model_fields.items():
            assert info.title and info.description, f"{name}.{field}"
