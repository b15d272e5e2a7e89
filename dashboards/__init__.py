"""Grafana dashboards as code for the call monitor (Grafana Foundation SDK).

`python -m dashboards.generate` writes `calls.json` ("Calls", uid `call-monitor-calls`)
and `monitor-health.json` ("Monitor health", uid `call-monitor-health`) next to this
file; `--check` fails when they are stale. `dashboards.generate.panel_queries()` lists
every PromQL query of every panel for tests against a real Prometheus.
"""
