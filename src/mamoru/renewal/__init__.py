"""When to renew (policy.py) and when to try again after a failure (backoff.py); both pure."""
