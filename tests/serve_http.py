"""The monitor's HTTP server alone (`monitor.runtime.http.serve` with a `Monitor` that is not
started), for tests that load it from another process and measure it from outside.

Settings come from the environment as for `call-monitor run`. Prints the port once
listening, then serves until its stdin closes (so it ends with the test that started it).
"""

from __future__ import annotations

import asyncio
import sys

from monitor.runtime.config import load_settings
from monitor.runtime.http import serve
from monitor.runtime.service import Monitor


async def main() -> None:
    monitor = Monitor(load_settings())
    async with serve(monitor) as (port, _):
        print(port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


if __name__ == "__main__":
    asyncio.run(main())
