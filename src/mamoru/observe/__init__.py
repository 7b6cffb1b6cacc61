"""What mamoru tells people and machines about its work: events (events.py) and their sinks
(sinks.py: JSONL log, stderr/journald), the words for each event (messages.py), what counts
against a site (danger.py), alerts (alerts/: rules, record, delivery, channels), metrics,
status and log queries.

May import: clock, config, errors, storage, renewal (pure policy), netaddr. Never protocol,
install, check, pipeline or cli: observers watch the story, they do not take part in it.
"""
