"""Callback jobs: the built-in task `notifyq.http`, which calls an app back over HTTP, signed, with
retries, and only where the SSRF rule allows (addresses.py)."""
