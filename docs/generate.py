"""Write what docs/ draws from the code: the state diagram of docs/outcomes.md, from the
machine's transition tables. `make docs` runs it; a unit test fails when it is stale."""

from __future__ import annotations

import re
from pathlib import Path

from monitor.core.machine import state_diagram

OUTCOMES = Path(__file__).with_name("outcomes.md")
_STATES = re.compile(r"(<!-- states: [^\n]*-->\n)(?:.*?)(<!-- /states -->)", re.S)


def with_diagram(text: str) -> str:
    """`text` (docs/outcomes.md) with the diagram between its markers drawn anew."""
    block = "```mermaid\n" + state_diagram() + "```\n"
    replaced, count = _STATES.subn(lambda m: m.group(1) + block + m.group(2), text)
    if count != 1:
        raise SystemExit(f"{OUTCOMES}: the states markers are missing")
    return replaced


def main() -> None:
    OUTCOMES.write_text(with_diagram(OUTCOMES.read_text()))
    print(f"wrote {OUTCOMES}")


if __name__ == "__main__":
    main()
