"""The HTTP API (opt-in: `api_address`): enqueue, inspect, cancel and retry jobs, and manage schedules,
over HTTP with bearer tokens, for apps that do not speak SQL to notifyq's database."""
