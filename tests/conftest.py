"""Suite-wide rules: a time limit on every test, and unit runs that never import the
integration suite (whose modules need packages only the integration install has).
"""

from __future__ import annotations

from pathlib import Path

import pytest

INTEGRATION_DIR = Path(__file__).parent / "integration"
# A unit test that takes this long is hung (the whole unit suite takes ~20 s): it fails with
# a traceback instead of holding CI until its limit. Integration tests get the ini's limit.
UNIT_TIMEOUT = 60


def _selects_integration(markexpr: str) -> bool:
    """Whether `-m markexpr` can select a test marked `integration` (and maybe `browser`)."""
    if not markexpr:
        return True
    from _pytest.mark.expression import Expression

    expression = Expression.compile(markexpr)
    marks = ({"integration"}, {"integration", "browser"})
    return any(expression.evaluate(lambda name, m=m, **_: name in m) for m in marks)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Skips importing tests/integration when the mark expression deselects all of it."""
    if collection_path == INTEGRATION_DIR and not _selects_integration(
        config.getoption("markexpr") or ""
    ):
        return True
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in Path(item.path).parents:
            continue
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT))
