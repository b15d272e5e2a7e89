"""The pure core: calls as typed events and records, the transitions, the machine, the
outcome rules, and what may be shown of a phone number. No I/O, no clock, no asyncio,
livekit, prometheus_client or structlog (a test checks the imports)."""
