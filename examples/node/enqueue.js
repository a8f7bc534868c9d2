// Enqueue a notifyq job from Node.js, inside your own transaction (the job exists only if it commits).
// This one is a callback: the daemon POSTs the body to CALLBACK_URL, signed, with retries.
//     DATABASE_URL=postgresql://... CALLBACK_URL=https://your.app/hooks/order node enqueue.js
import pg from "pg";

const client = new pg.Client({ connectionString: process.env.DATABASE_URL });
await client.connect();
try {
  await client.query("BEGIN");
  // ... your application's own writes go here ...
  const { rows } = await client.query(
    "SELECT notifyq.enqueue('notifyq.http', $1::jsonb) AS job_id",
    [JSON.stringify({ url: process.env.CALLBACK_URL, body: { order: 42, from: "node" } })],
  );
  await client.query("COMMIT");
  console.log(`enqueued job ${rows[0].job_id}`);
} catch (err) {
  await client.query("ROLLBACK");
  throw err;
} finally {
  await client.end();
}
