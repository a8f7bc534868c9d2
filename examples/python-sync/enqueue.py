"""Enqueue a notifyq job from synchronous Python (Django, Flask) with psycopg 3, inside your own
transaction: the job exists only if it commits. This one is a callback to CALLBACK_URL.

    DATABASE_URL=postgresql://... CALLBACK_URL=https://your.app/hooks/order python enqueue.py
"""

import json
import os

import psycopg

with psycopg.connect(os.environ["DATABASE_URL"]) as conn:  # commits on leaving the block
    # ... your application's own writes go here, on the same connection ...
    job_id = conn.execute(
        "SELECT notifyq.enqueue('notifyq.http', %s::jsonb)",
        [json.dumps({"url": os.environ["CALLBACK_URL"], "body": {"order": 42, "from": "python"}})],
    ).fetchone()[0]
print(f"enqueued job {job_id}")
