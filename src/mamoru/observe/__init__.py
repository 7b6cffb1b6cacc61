"""What mamoru tells people and machines about its work: events and their sinks (JSONL log,
stderr/journald), the words for each event (messages), alerts, metrics, status and log queries.

May import: config, errors, storage, renewal (pure policy), netaddr. Never protocol, install,
check, pipeline or cli: observers watch the story, they do not take part in it.
"""
