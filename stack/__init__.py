"""The local LiveKit stack for tests, the demo and benchmarks.

`Stack.start(StackConfig(...))` starts redis, livekit-server and the SIP simulator on
free loopback ports (installing or building what is missing) and stops them again on
exit; `build()` only installs and builds. See docs/stack.md.
"""

from stack._stack import Part, Stack, StackError, StackStartError
from stack.build import Binaries, BuildError, build
from stack.config import StackConfig, StackPorts
from stack.ledger import CallEnded, Ledger, LedgerEvent

__all__ = [
    "Binaries",
    "BuildError",
    "CallEnded",
    "Ledger",
    "LedgerEvent",
    "Part",
    "Stack",
    "StackConfig",
    "StackError",
    "StackPorts",
    "StackStartError",
    "build",
]
