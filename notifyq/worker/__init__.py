"""The daemon's moving parts: dispatcher, executor, completer, heartbeat, maintenance."""
