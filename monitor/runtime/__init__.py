"""The process that wires sources, core and sinks: settings, the service (pipeline,
room watching, reconciliation), HTTP, the restart from the journal, and replay."""
