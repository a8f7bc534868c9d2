"""The catalogue of the mutation gate: one entry per mechanism behind a promise (docs/design.md).

Each entry names the promise, the edits that break its mechanism (exact text, found once), and the
tests that must notice, fastest first (the run stops at the first failure). A new mechanism gets a new
entry. Where a condition is redundant with a constraint (`state = 'running'` beside the
`jobs_lease_only_when_running` CHECK, which keeps lease tokens on running rows only), removing either
alone changes nothing a test could see, so the entry removes both: the pair is the mechanism.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Edit:
    """Replace `old` (found exactly once) by `new` in `path`; in a .sql file, `within` names the
    statement (`-- name: ...`) the text must be found in."""

    path: str
    old: str
    new: str
    within: str | None = None


@dataclass(frozen=True)
class Mutation:
    name: str
    promise: str
    edits: tuple[Edit, ...]
    tests: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


WORKER_SQL = "sql/queries/worker.sql"
INIT_SQL = "sql/migrations/0001_init.sql"
MANY_SQL = "sql/migrations/0002_enqueue_many.sql"
# 0004 replaced the insert guard (now notifyq.jobs_guard, for INSERT and UPDATE) and both enqueue
# functions: their live text is here, not in 0001/0002.
GUARDS_SQL = "sql/migrations/0004_producer_guards.sql"
# 0005 redefined notifyq.jobs_guard() once more (one line added): the guard's live text is there.
GUARD_FN_SQL = "sql/migrations/0005_unclear_crashes.sql"

SCHEDULES_SQL = "sql/queries/schedules.sql"
SCHEDULES_MIGRATION = "sql/migrations/0007_schedules.sql"

FENCES = "tests/integration/test_fences.py"
SCHEDULES = "tests/integration/test_schedules.py"
STATE_MACHINE = "tests/faults/test_state_machine.py::test_job_lifecycle_state_machine"
RETENTION = "tests/integration/test_retention.py"
LIMITS = "tests/integration/test_limits.py"
LIFECYCLE = "tests/faults/test_lifecycle.py"
DAEMON = "tests/integration/test_daemon.py"
PROCESSES = "tests/faults/test_processes.py"
FENCING = "tests/faults/test_fencing.py"
HOSTILE = "tests/faults/test_hostile.py"
HTTP = "tests/faults/test_http_server.py"
OUTCOMES = "tests/unit/test_outcomes.py"
# The state machine at a size that still kills its entries, in a fraction of the suite's time.
SMALL_MACHINE = {"NOTIFYQ_STATE_MACHINE_EXAMPLES": "40", "NOTIFYQ_STATE_MACHINE_SHRINK": "0"}

# The constraint that makes `state = 'running'` redundant (see the module docstring).
_NO_LEASE_CHECK = Edit(
    INIT_SQL,
    """,
    CONSTRAINT jobs_lease_only_when_running CHECK (
        (state = 'running') = (lease_token IS NOT NULL AND leased_until IS NOT NULL)
    )""",
    "",
)


CATALOGUE: tuple[Mutation, ...] = (
    # -- fenced finalization: only the current lease writes --------------------------------------
    Mutation(
        "fence_batch_statements",
        "begin, outcomes, successes and the heartbeat write a row only under the job's current lease token",
        (
            Edit(
                WORKER_SQL,
                "WHERE j.id = o.id AND j.lease_token = o.token AND j.leased_until IS NOT NULL\n    FOR NO KEY",
                "WHERE j.id = o.id AND j.leased_until IS NOT NULL\n    FOR NO KEY",
                "lock_batch",
            ),
        ),
        (
            f"{FENCES}::test_only_the_current_lease_token_finalizes",
            f"{FENCES}::test_begin_counts_the_attempt_once_and_only_under_a_current_unexpired_lease",
            STATE_MACHINE,
        ),
        SMALL_MACHINE,
    ),
    Mutation(
        "running_complete_succeeded",
        "a finished row is never overwritten by a late success (its token is cleared, and the lease CHECK)",
        (Edit(WORKER_SQL, "        lease_token = NULL,\n", "", "complete_succeeded"), _NO_LEASE_CHECK),
        (FENCES,),
    ),
    Mutation(
        "running_record_outcomes",
        "a finished row is never overwritten by a late outcome (its token is cleared, and the lease CHECK)",
        (
            Edit(
                WORKER_SQL,
                "    lease_token = NULL,\n        leased_until",
                "    leased_until",
                "record_outcomes",
            ),
            _NO_LEASE_CHECK,
        ),
        (FENCES,),
    ),
    Mutation(
        "running_rescue",
        "rescue touches running rows only (state = 'running' and the lease CHECK)",
        (Edit(WORKER_SQL, "j.state = 'running' AND ", "", "rescue_expired"), _NO_LEASE_CHECK),
        (FENCES,),
    ),
    # -- leases: extended by the heartbeat, expired by rescue, fenced in the daemon ---------------
    Mutation(
        "heartbeat_extends_by_too_little",
        "a job longer than its lease on a healthy daemon runs once (the heartbeat extends a whole lease)",
        (
            Edit(
                WORKER_SQL,
                "SET leased_until = notifyq.now() + make_interval(secs => $3::float8)",
                "SET leased_until = notifyq.now() + make_interval(secs => $3::float8 / 6)",
                "extend_leases",
            ),
        ),
        (f"{LIFECYCLE}::test_job_longer_than_its_lease_runs_once_on_a_healthy_daemon", FENCES),
    ),
    Mutation(
        "rescue_takes_live_leases",
        "rescue takes only expired leases",
        (
            Edit(
                WORKER_SQL,
                "j.leased_until < notifyq.now()",
                "j.leased_until < notifyq.now() + interval '20 seconds'",
                "rescue_expired",
            ),
        ),
        (FENCES, STATE_MACHINE),
        SMALL_MACHINE,
    ),
    Mutation(
        "heartbeat_ignores_lost_leases",
        "a handler whose lease the database no longer holds is cancelled",
        (
            Edit(
                "notifyq/worker/heartbeat.py",
                'self._lost(job_id, held[job_id], "not held in the database")',
                "pass",
            ),
        ),
        (f"{FENCING}::test_a_lease_taken_away_in_the_database_cancels_its_handler_at_the_next_beat",),
    ),
    Mutation(
        "heartbeat_no_self_fence",
        "a lease unconfirmed for most of a lease is treated as lost (the daemon fences itself)",
        (
            Edit(
                "notifyq/worker/heartbeat.py",
                "for job_id, token in self._leases.expired(self._lease_seconds - self._interval):",
                "for job_id, token in []:",
            ),
        ),
        (f"{FENCING}::test_a_daemon_that_cannot_reach_the_database_fences_its_own_handlers",),
    ),
    # -- attempts are counted when a job starts; the claim takes runnable rows in order ----------
    Mutation(
        "attempts_not_counted",
        "a job's attempt is counted when it starts, so a job that kills its worker cannot retry forever",
        (Edit(WORKER_SQL, "SET attempts = j.attempts + 1,", "SET attempts = j.attempts,", "begin_jobs"),),
        (f"{FENCES}::test_begin_counts_the_attempt_once_and_only_under_a_current_unexpired_lease",),
    ),
    Mutation(
        "begin_with_a_stale_lease",
        "a daemon frozen past its lease starts no buffered job: begin requires a lease not yet run out",
        (Edit(WORKER_SQL, "\n      AND j.leased_until > notifyq.now()", "", "begin_jobs"),),
        (f"{FENCES}::test_begin_counts_the_attempt_once_and_only_under_a_current_unexpired_lease",),
    ),
    Mutation(
        "begin_twice",
        "one lease counts its attempt once",
        (
            Edit(
                WORKER_SQL,
                "WHERE j.started_at IS NULL\n      AND j.leased_until",
                "WHERE j.leased_until",
                "begin_jobs",
            ),
        ),
        (f"{FENCES}::test_begin_counts_the_attempt_once_and_only_under_a_current_unexpired_lease",),
    ),
    Mutation(
        "runner_runs_without_begin",
        "a runner starts a job only once its attempt is counted",
        (
            Edit(
                "notifyq/worker/executor.py",
                "            if started and self._leases.fresh(job.id, claim.lease_token):",
                "            if self._leases.fresh(job.id, claim.lease_token):",
            ),
        ),
        ("tests/unit/test_executor.py",),
    ),
    Mutation(
        "run_after_a_held_up_begin",
        "a begun job whose lease went unconfirmed too long (the loop was held up) is not run",
        (
            Edit(
                "notifyq/worker/executor.py",
                "            if started and self._leases.fresh(job.id, claim.lease_token):",
                "            if started:",
            ),
        ),
        ("tests/unit/test_executor.py",),
    ),
    Mutation(
        "rescue_fails_unstarted_jobs",
        "a job that never started is put back as it was by rescue, never failed for a crash",
        (
            Edit(
                WORKER_SQL,
                "SET state = CASE WHEN judged.started AND NOT judged.forgiven AND j.attempts >= j.max_attempts",
                "SET state = CASE WHEN j.attempts + 1 >= j.max_attempts",
                "rescue_expired",
            ),
        ),
        (f"{FENCES}::test_rescue_puts_an_unstarted_job_back_as_it_was",),
    ),
    Mutation(
        "rescue_forgives_nothing",
        "a job whose start is not known to have run loses no attempt the first time (a killer's batch-mates)",
        (
            Edit(
                WORKER_SQL,
                "j.started_at > coalesce(w.entered_through, '-infinity') AND j.unclear_crashes = 0 AS forgiven",
                "false AS forgiven",
                "rescue_expired",
            ),
        ),
        (f"{FENCES}::test_rescue_takes_exactly_the_expired_leases", STATE_MACHINE),
        SMALL_MACHINE,
    ),
    Mutation(
        "rescue_forgives_every_unclear_crash",
        "a job that kills its worker cannot retry for ever: only its first unclear crash is forgiven",
        (
            Edit(
                WORKER_SQL,
                "j.started_at > coalesce(w.entered_through, '-infinity') AND j.unclear_crashes = 0 AS forgiven",
                "j.started_at > coalesce(w.entered_through, '-infinity') AS forgiven",
                "rescue_expired",
            ),
        ),
        (f"{FENCES}::test_rescue_takes_exactly_the_expired_leases", STATE_MACHINE),
        SMALL_MACHINE,
    ),
    Mutation(
        "rescue_ignores_the_mark",
        "a job its worker's mark records as run has its crash counted, not forgiven (max_attempts=1 stays at most once)",
        (
            Edit(
                WORKER_SQL,
                "coalesce(w.entered_through, '-infinity') AS unclear,",
                "'infinity'::timestamptz AS unclear,",
                "rescue_expired",
            ),
            Edit(
                WORKER_SQL,
                "j.started_at > coalesce(w.entered_through, '-infinity') AND j.unclear_crashes = 0 AS forgiven",
                "j.unclear_crashes = 0 AS forgiven",
                "rescue_expired",
            ),
        ),
        (f"{FENCES}::test_rescue_counts_a_start_the_mark_covers_and_forgives_one_it_does_not", STATE_MACHINE),
        SMALL_MACHINE,
    ),
    Mutation(
        "mark_not_moved_by_begin",
        "each begin statement carries the worker's entered_through mark",
        (
            Edit(
                WORKER_SQL,
                "SET entered_through = greatest(w.entered_through, $4::timestamptz)\n    WHERE w.id = $3::uuid AND $4::timestamptz IS NOT NULL",
                "SET entered_through = w.entered_through\n    WHERE w.id = $3::uuid AND $4::timestamptz IS NOT NULL",
                "begin_jobs",
            ),
        ),
        (f"{FENCES}::test_rescue_counts_a_start_the_mark_covers_and_forgives_one_it_does_not", STATE_MACHINE),
        SMALL_MACHINE,
    ),
    Mutation(
        "mark_follows_no_handler",
        "the mark moves only once every job begun before it has had its handler called",
        (
            Edit(
                "notifyq/worker/starter.py",
                "while self._batches and not self._batches[0].open:",
                "while self._batches:",
            ),
        ),
        (
            "tests/integration/test_alone.py::test_the_mark_moves_only_past_batches_whose_handlers_were_all_called",
        ),
    ),
    Mutation(
        "rescue_takes_its_own_held_leases",
        "a daemon does not rescue leases it still holds (its heartbeat extends or fences them)",
        (
            Edit(
                WORKER_SQL,
                "AND (j.id, j.lease_token) NOT IN (SELECT * FROM unnest($2::bigint[], $3::uuid[]))",
                "AND (j.id, j.lease_token) NOT IN (SELECT * FROM unnest($2::bigint[], $3::uuid[]) WHERE false)",
                "rescue_expired",
            ),
        ),
        (f"{FENCES}::test_rescue_leaves_the_leases_its_own_daemon_still_holds", STATE_MACHINE),
        SMALL_MACHINE,
    ),
    Mutation(
        "forgiven_job_begun_in_a_batch",
        "a job forgiven an unclear crash is begun in a statement of its own",
        (
            Edit(
                "notifyq/worker/starter.py",
                "            if claim.job.unclear_crashes and not future.done():",
                "            if False:",
            ),
        ),
        (
            "tests/integration/test_alone.py::test_an_async_job_forgiven_before_starts_alone_until_its_first_await",
        ),
    ),
    Mutation(
        "forgiven_job_not_waited_for",
        "nothing else is begun until the mark covers a job begun alone",
        (Edit("notifyq/worker/starter.py", "            await batch.done.wait()\n", "            pass\n"),),
        ("tests/integration/test_alone.py",),
    ),
    Mutation(
        "mark_covers_a_given_back_job_early",
        "a begun job given back unrun is covered by the mark only once its attempt is back",
        (
            Edit(
                "notifyq/worker/executor.py",
                "reason=reason)\n            self._hand_off(claim, outcomes.unstarted(claim))",
                "reason=reason)\n            self._starter.entered(job.id, claim.lease_token)\n"
                "            self._hand_off(claim, outcomes.unstarted(claim))",
            ),
        ),
        (
            "tests/integration/test_alone.py::test_a_begun_job_given_back_unrun_is_covered_only_once_its_attempt_is_back",
        ),
    ),
    Mutation(
        "mark_write_failure_escapes",
        "a mark that cannot be written stops nothing (it only lags)",
        (
            Edit(
                "notifyq/worker/starter.py",
                "                except (DatabaseUnavailable, QueryError) as exc:\n                    # Safe: the mark",
                "                except ZeroDivisionError as exc:\n                    # Safe: the mark",
            ),
        ),
        ("tests/integration/test_alone.py::test_a_mark_that_cannot_be_written_stops_nothing",),
    ),
    Mutation(
        "claim_runs_early",
        "no job runs before its run_at (both claims share the condition)",
        (Edit(WORKER_SQL, "\n  AND j.run_at <= notifyq.now())", ")", "claim_runnable"),),
        (STATE_MACHINE, f"{DAEMON}::test_scheduled_job_runs_at_its_time_without_a_poll"),
        SMALL_MACHINE,
    ),
    Mutation(
        "claim_priority_reversed",
        "higher priority runs first (both claims share the order)",
        (
            Edit(
                WORKER_SQL,
                "ORDER BY j.priority DESC, j.run_at, j.id",
                "ORDER BY j.priority, j.run_at, j.id",
                "claim_order",
            ),
        ),
        (f"{DAEMON}::test_a_higher_priority_job_jumps_a_draining_backlog", STATE_MACHINE),
        SMALL_MACHINE,
    ),
    Mutation(
        "claim_position_repeats_a_row",
        "a claim continuing after a position starts strictly after it",
        (
            Edit(
                WORKER_SQL,
                "AND (j.run_at, j.id) > (q.after_run_at, q.after_id)",
                "AND (j.run_at, j.id) >= (q.after_run_at, q.after_id)",
                "claim_jobs",
            ),
        ),
        (
            "tests/integration/test_plans.py::test_claim_continues_after_a_position_and_takes_lower_priorities_after_it",
            STATE_MACHINE,
        ),
        SMALL_MACHINE,
    ),
    Mutation(
        "claim_buffers_late",
        "each claim statement's jobs reach the buffer at once, so a later failure strands none",
        (
            Edit(
                "notifyq/worker/claimer.py",
                "        self._on_claimed(claims, claimed_at)\n        return claims\n",
                "        return claims\n",
            ),
            Edit(
                "notifyq/worker/claimer.py",
                "            self._after.clear()  # drained: the next claim starts from the head\n        return claims\n",
                "            self._after.clear()  # drained: the next claim starts from the head\n"
                "        self._on_claimed(claims, claimed_at)\n        return claims\n",
            ),
        ),
        ("tests/unit/test_claimer.py",),
    ),
    Mutation(
        "max_attempts_override_any_task",
        "a task's max_attempts applies to that task's jobs only",
        (Edit(WORKER_SQL, "WHERE o.task = j.task", "WHERE o.task IS NOT NULL", "claim_lease"),),
        (
            "tests/integration/test_producer_guards.py::test_the_claim_writes_the_producers_value_else_the_tasks_else_the_default",
            STATE_MACHINE,
        ),
        SMALL_MACHINE,
    ),
    Mutation(
        "snooze_spends_the_attempt",
        "a snooze or release gives its attempt back",
        (
            Edit(
                WORKER_SQL,
                "attempts = j.attempts - CASE WHEN j.started_at IS NULL THEN 0 ELSE m.refund END,",
                "attempts = j.attempts,",
                "record_outcomes",
            ),
        ),
        # The daemon test kills it every time; the state machine only when its examples snooze.
        (f"{DAEMON}::test_retry_snooze_discard_and_timeout", STATE_MACHINE),
        SMALL_MACHINE,
    ),
    # -- the wake-up protocol --------------------------------------------------------------------
    Mutation(
        "trigger_never_notifies",
        "an idle daemon is woken by NOTIFY when a job is committed",
        (Edit(INIT_SQL, "        PERFORM pg_notify('notifyq', NEW.queue);", "        NULL;"),),
        (f"{DAEMON}::test_psql_insert_wakes_an_idle_daemon_well_within_the_poll",),
    ),
    Mutation(
        "trigger_always_notifies",
        "producers beside a busy daemon send no NOTIFY (the gate's decision)",
        (
            Edit(
                INIT_SQL,
                "    IF pg_try_advisory_lock(7243, hashtext(NEW.queue)) THEN",
                "    IF false THEN",
            ),
        ),
        (f"{DAEMON}::test_gated_notify_only_while_a_daemon_is_idle",),
    ),
    Mutation(
        "no_safety_poll",
        "a commit no NOTIFY announced is still found within the safety poll",
        (
            Edit(
                "notifyq/worker/dispatcher.py",
                "        self._poll = poll_interval\n",
                "        self._poll = math.inf\n",
            ),
        ),
        (f"{DAEMON}::test_an_unannounced_commit_costs_at_most_the_poll",),
    ),
    Mutation(
        "no_listener_probe",
        "a stalled LISTEN connection is noticed by the self-probe and replaced",
        (
            Edit(
                "notifyq/notifier.py",
                "    async def _probe(self, conn: asyncpg.Connection) -> bool:\n",
                "    async def _probe(self, conn: asyncpg.Connection) -> bool:\n        return True\n",
            ),
        ),
        ("tests/faults/test_listener.py::test_blackholed_listener_is_noticed_by_the_probe",),
    ),
    # -- shutdown --------------------------------------------------------------------------------
    Mutation(
        "release_spends_the_attempt",
        "a job cancelled at the shutdown deadline goes back without spending its attempt",
        (
            Edit(
                "notifyq/worker/outcomes.py",
                "return make(claim, OutcomeKind.RELEASED, JobState.QUEUED, refund=1)",
                "return make(claim, OutcomeKind.RELEASED, JobState.QUEUED, refund=0)",
            ),
        ),
        (f"{PROCESSES}::test_sigterm_past_the_deadline_releases_without_spending_an_attempt",),
    ),
    Mutation(
        "unstarted_spends_the_attempt",
        "a job given back after its begin got through (the answer lost, a stop during it) gets its attempt back",
        (
            Edit(
                "notifyq/worker/outcomes.py",
                "return make(claim, OutcomeKind.UNSTARTED, JobState.QUEUED, refund=1)",
                "return make(claim, OutcomeKind.UNSTARTED, JobState.QUEUED, refund=0)",
            ),
        ),
        (f"{OUTCOMES}::test_snooze_release_and_unstarted_give_the_attempt_back",),
    ),
    Mutation(
        "shutdown_keeps_buffered_jobs",
        "at shutdown, buffered jobs go back to the queue at once",
        (
            Edit(
                "notifyq/worker/dispatcher.py",
                "            self._executor.give_back(self._prefetch.take_all())\n            self._prefetch.close()\n",
                "            self._prefetch.close()\n",
            ),
        ),
        (f"{DAEMON}::test_buffered_jobs_go_back_at_shutdown_even_when_a_runner_frees_up_during_the_drain",),
    ),
    Mutation(
        "sigterm_keeps_claiming",
        "SIGTERM stops claiming at once; a job enqueued during the drain is left for other daemons",
        (
            Edit(
                "notifyq/worker/dispatcher.py",
                "            await self._claim_loop()\n            self._wake_topic.set_idle(False)\n",
                "            await self._claim_loop()\n            self._stopping = anyio.Event()\n"
                "            work.start_soon(self._claim_loop)\n            self._wake_topic.set_idle(False)\n",
            ),
            Edit(
                "notifyq/worker/dispatcher.py",
                "            await self._drain()\n",
                "            await self._drain()\n            self._stopping.set()\n            self._wake.hint(WakeSource.STOP)\n",
            ),
        ),
        (f"{LIFECYCLE}::test_sigterm_stops_claiming_at_once",),
    ),
    Mutation(
        "shutdown_no_deadline",
        "running jobs get shutdown_timeout to finish, then are cancelled and released",
        (
            Edit(
                "notifyq/worker/dispatcher.py",
                "        with anyio.move_on_after(self._shutdown_timeout):\n",
                "        with anyio.move_on_after(self._shutdown_timeout * 100):\n",
            ),
        ),
        (f"{LIFECYCLE}::test_shutdown_deadline_is_kept_and_the_job_released",),
    ),
    # -- bounded memory --------------------------------------------------------------------------
    Mutation(
        "completer_no_backpressure",
        "while outcomes cannot be written, runners stop taking new jobs (bounded memory, bounded re-runs)",
        (
            Edit(
                "notifyq/worker/completer.py",
                "        if not self._room.is_set():\n            await self._room.wait()\n",
                "        return\n",
            ),
        ),
        (f"{LIFECYCLE}::test_outcome_buffer_stops_the_runners_during_an_outage",),
    ),
    Mutation(
        "prefetch_no_byte_budget",
        "the prefetch buffer holds at most 16 MiB of payloads",
        (
            Edit(
                "notifyq/worker/prefetch.py",
                "PREFETCH_BYTES = 16 * 1024 * 1024",
                "PREFETCH_BYTES = 1024 * 1024 * 1024",
            ),
        ),
        (
            f"{LIFECYCLE}::test_large_payloads_stay_within_the_prefetch_byte_budget",
            f"{DAEMON}::test_the_prefetch_holds_no_more_than_its_byte_budget_of_payloads",
        ),
    ),
    # -- retries ---------------------------------------------------------------------------------
    Mutation(
        "backoff_does_not_grow",
        "retries back off exponentially",
        (
            Edit(
                "notifyq/retry.py",
                "self.base_seconds * self.factor**exponent",
                "self.base_seconds",
            ),
        ),
        (
            "tests/unit/test_backoff.py",
            "tests/unit/test_units.py::test_backoff_grows_caps_and_never_comes_early",
        ),
    ),
    Mutation(
        "no_jitter",
        "retries are spread by jitter",
        (Edit("notifyq/retry.py", "return floor * (1.0 + self.jitter * draw)", "return floor"),),
        ("tests/unit/test_backoff.py",),
    ),
    Mutation(
        "jitter_comes_early",
        "jitter only adds: a retry never runs before its backoff",
        (
            Edit(
                "notifyq/retry.py",
                "return floor * (1.0 + self.jitter * draw)",
                "return floor * (1.0 + self.jitter * (draw - 0.5))",
            ),
        ),
        ("tests/unit/test_backoff.py",),
    ),
    # -- the producer boundary -------------------------------------------------------------------
    Mutation(
        "guard_accepts_any_state",
        "producers may only insert queued jobs",
        (Edit(GUARD_FN_SQL, "    IF NEW.state IS DISTINCT FROM 'queued' THEN", "    IF false THEN"),),
        ("tests/integration/test_producer.py::test_bad_rows_are_refused_naming_the_field",),
    ),
    Mutation(
        "guard_accepts_attempts",
        "producers may not insert spent attempts",
        (Edit(GUARD_FN_SQL, "    IF NEW.attempts IS DISTINCT FROM 0 THEN", "    IF false THEN"),),
        ("tests/integration/test_producer.py::test_bad_rows_are_refused_naming_the_field",),
    ),
    Mutation(
        "guard_priority_bound",
        "priority is refused beyond -1000..1000, naming the field",
        (
            Edit(
                GUARD_FN_SQL,
                "IF NEW.priority IS NULL OR NEW.priority NOT BETWEEN -1000 AND 1000 THEN",
                "IF NEW.priority IS NULL OR NEW.priority NOT BETWEEN -1001 AND 1001 THEN",
            ),
            Edit(
                INIT_SQL,
                "CHECK (priority BETWEEN -1000 AND 1000)",
                "CHECK (priority BETWEEN -1001 AND 1001)",
            ),
        ),
        (LIMITS,),
    ),
    Mutation(
        "guard_payload_bound",
        "payloads over 1 MiB are refused, naming the field",
        (
            Edit(
                GUARD_FN_SQL,
                "IF NEW.payload IS NULL OR octet_length(NEW.payload::text) > 1048576 THEN",
                "IF NEW.payload IS NULL OR octet_length(NEW.payload::text) > 1048577 THEN",
            ),
        ),
        (LIMITS,),
    ),
    Mutation(
        "guard_dedup_key_bound",
        "an empty dedup key is refused, naming the field",
        (
            Edit(
                GUARD_FN_SQL,
                "IF NEW.dedup_key IS NOT NULL AND char_length(NEW.dedup_key) NOT BETWEEN 1 AND 200 THEN",
                "IF NEW.dedup_key IS NOT NULL AND char_length(NEW.dedup_key) NOT BETWEEN 0 AND 200 THEN",
            ),
            Edit(
                INIT_SQL,
                "CHECK (dedup_key IS NULL OR char_length(dedup_key) BETWEEN 1 AND 200)",
                "CHECK (dedup_key IS NULL OR char_length(dedup_key) BETWEEN 0 AND 200)",
            ),
        ),
        (LIMITS,),
    ),
    Mutation(
        "dedup_ignores_running_holders",
        "a dedup key is held while its job is queued or running",
        (
            Edit(
                INIT_SQL,
                "CREATE UNIQUE INDEX jobs_dedup_key_idx ON notifyq.jobs (dedup_key)\n"
                "    WHERE dedup_key IS NOT NULL AND state IN ('queued', 'running');",
                "CREATE UNIQUE INDEX jobs_dedup_key_idx ON notifyq.jobs (dedup_key)\n"
                "    WHERE dedup_key IS NOT NULL AND state IN ('queued');",
            ),
            Edit(
                GUARDS_SQL,
                "            enqueue.max_attempts\n        )\n"
                "        ON CONFLICT (dedup_key) WHERE dedup_key IS NOT NULL AND state IN ('queued', 'running')",
                "            enqueue.max_attempts\n        )\n"
                "        ON CONFLICT (dedup_key) WHERE dedup_key IS NOT NULL AND state IN ('queued')",
            ),
            Edit(
                GUARDS_SQL,
                "WHERE j.dedup_key = enqueue.dedup_key AND j.state IN ('queued', 'running');",
                "WHERE j.dedup_key = enqueue.dedup_key AND j.state IN ('queued');",
            ),
            Edit(
                GUARDS_SQL,
                "        ORDER BY r.pos\n"
                "        ON CONFLICT (dedup_key) WHERE dedup_key IS NOT NULL AND state IN ('queued', 'running')",
                "        ORDER BY r.pos\n"
                "        ON CONFLICT (dedup_key) WHERE dedup_key IS NOT NULL AND state IN ('queued')",
            ),
            Edit(
                GUARDS_SQL,
                "JOIN notifyq.jobs AS j ON j.dedup_key = g.key AND j.state IN ('queued', 'running')",
                "JOIN notifyq.jobs AS j ON j.dedup_key = g.key AND j.state IN ('queued')",
            ),
        ),
        ("tests/integration/test_dedup.py",),
    ),
    Mutation(
        "dedup_forever",
        "a dedup key is free again once its job has finished",
        (
            Edit(
                INIT_SQL,
                "CREATE UNIQUE INDEX jobs_dedup_key_idx ON notifyq.jobs (dedup_key)\n"
                "    WHERE dedup_key IS NOT NULL AND state IN ('queued', 'running');",
                "CREATE UNIQUE INDEX jobs_dedup_key_idx ON notifyq.jobs (dedup_key)\n"
                "    WHERE dedup_key IS NOT NULL AND state IN ('queued', 'running', 'succeeded', 'failed',"
                " 'cancelled');",
            ),
        ),
        ("tests/integration/test_dedup.py",),
    ),
    # -- retention -------------------------------------------------------------------------------
    Mutation(
        "prune_ignores_age",
        "retention deletes only finished jobs older than the retention",
        (
            Edit(
                WORKER_SQL,
                "AND j.finished_at < notifyq.now() - make_interval(secs => $1::float8)",
                "AND j.finished_at < notifyq.now() - make_interval(secs => $1::float8 * 0)",
                "prune_finished",
            ),
        ),
        (RETENTION,),
    ),
    Mutation(
        "prune_unfinished",
        "retention never deletes a queued or running job",
        (
            Edit(
                WORKER_SQL,
                "j.state IN ('succeeded', 'failed', 'cancelled')",
                "j.state IS NOT NULL",
                "prune_finished",
            ),
        ),
        (RETENTION,),
    ),
    Mutation(
        "prune_unbounded",
        "retention deletes in bounded batches",
        (Edit(WORKER_SQL, "LIMIT $2\n", "LIMIT $2 + 1\n", "prune_finished"),),
        (RETENTION,),
    ),
    Mutation(
        "prune_live_workers",
        "a worker is forgotten only after ten of its leases of silence",
        (Edit(WORKER_SQL, "greatest(10 * lease_seconds, $1::float8)", "$1::float8", "prune_workers"),),
        (RETENTION,),
    ),
    # -- hardening: what a hostile review broke (issue 12) -----------------------------------------
    Mutation(
        "runner_dies_with_its_handler",
        "a handler that cancels its own task breaks no runner: the runner loop restarts",
        (
            Edit(
                "notifyq/worker/executor.py",
                "                if _cancelled_from_outside(exc):\n                    raise\n                task =",
                "                raise\n                task =",
            ),
        ),
        (f"{HOSTILE}::test_a_handler_that_cancels_its_own_task_breaks_no_runner",),
    ),
    Mutation(
        "same_job_twice_in_one_daemon",
        "a job claimed again while its older run winds down waits for that run: never two at once",
        (
            Edit(
                "notifyq/worker/executor.py",
                "                if claim.job.id in self._running:\n                    await self._wait_for_older_run(claim)\n",
                "",
            ),
        ),
        (f"{HOSTILE}::test_one_daemon_never_runs_one_job_twice_at_once",),
    ),
    Mutation(
        "snooze_any_delay",
        "Retry and Snooze refuse a delay out of range when made",
        (Edit("notifyq/errors.py", "if not 0 <= seconds <= MAX_DELAY_SECONDS:", "if False:"),),
        (f"{OUTCOMES}::test_job_control_refuses_bad_arguments_when_made",),
    ),
    Mutation(
        "undescribable_exception_escapes",
        "an exception whose __str__ raises even SystemExit is still described, as a failed attempt",
        (
            Edit(
                "notifyq/worker/outcomes.py",
                "    except BaseException as bad:  # even SystemExit",
                "    except Exception as bad:  # even SystemExit",
            ),
        ),
        (f"{OUTCOMES}::test_an_exception_whose_str_raises_anything_is_still_a_failed_attempt",),
    ),
    Mutation(
        "claim_head_ignores_its_byte_budget",
        "a claim takes payloads within its byte budget (claim_head)",
        (Edit(WORKER_SQL, "WHERE l.before < $7::bigint", "WHERE true", "claim_head"),),
        ("tests/integration/test_claim_budget.py",),
    ),
    Mutation(
        "claim_jobs_ignores_its_byte_budget",
        "a claim takes payloads within its byte budget (claim_jobs)",
        (Edit(WORKER_SQL, "WHERE l.before < $10::bigint", "WHERE true", "claim_jobs"),),
        ("tests/integration/test_claim_budget.py",),
    ),
    Mutation(
        "claim_budget_counts_compressed_bytes",
        "the byte budget counts the text a compressed payload becomes, not its size on disk",
        (
            Edit(
                WORKER_SQL,
                "ELSE octet_length(j.payload::text) END",
                "ELSE pg_column_size(j.payload) END",
                "claim_bytes",
            ),
        ),
        ("tests/integration/test_claim_budget.py",),
    ),
    Mutation(
        "claim_never_shrinks",
        "a claim that timed out halves the next ones",
        (
            Edit(
                "notifyq/worker/claimer.py",
                "self._max_rows = max(1, wanted // 2)",
                "self._max_rows = max(1, wanted)",
            ),
        ),
        ("tests/unit/test_claimer.py::test_a_claim_that_timed_out_halves_the_next_ones_and_grows_back",),
    ),
    Mutation(
        "http_no_connection_cap",
        "a flood of idle connections to the HTTP port cannot exhaust the daemon's descriptors",
        (Edit("notifyq/http.py", "_MAX_CONNECTIONS = 64", "_MAX_CONNECTIONS = 1_000_000"),),
        (f"{HTTP}::test_idle_connection_flood_beyond_the_fd_limit_leaves_the_daemon_serving",),
    ),
    Mutation(
        "http_accept_no_backoff",
        "accept() out of descriptors is retried after a back-off, never in a hot loop",
        (
            Edit(
                "notifyq/http.py",
                "await anyio.sleep(_ACCEPT_BACKOFF.delay(failures))",
                "await anyio.sleep(0)",
            ),
        ),
        (f"{HTTP}::test_accept_out_of_descriptors_backs_off_and_recovers",),
    ),
    Mutation(
        "settings_finite",
        "a setting that is NaN, infinite or beyond its range is refused at start with one line",
        (
            Edit("notifyq/config.py", "validate_default=True, allow_inf_nan=False", "validate_default=True"),
            Edit("notifyq/config.py", "        le=MAX_RETENTION_SECONDS,\n", ""),
        ),
        (
            "tests/unit/test_hostile_config.py::test_no_float_setting_takes_a_non_finite_or_huge_value",
            "tests/acceptance/test_hostile_config.py::test_serve_refuses_a_non_finite_or_huge_retention_at_start",
        ),
    ),
    Mutation(
        "dsn_redaction_first_at",
        "no part of a password reaches a log or an error: the userinfo ends at the last '@'",
        (
            Edit(
                "notifyq/config.py",
                'userinfo, at, after = rest.rpartition("@")',
                'userinfo, at, after = rest.partition("@")',
            ),
        ),
        (
            "tests/unit/test_hostile_config.py::test_redaction_takes_the_userinfo_up_to_the_last_at",
            "tests/unit/test_hostile_config.py::test_log_text_is_scrubbed_of_dsn_passwords",
        ),
    ),
    Mutation(
        "generator_handler_accepted",
        "a generator handler is refused at registration, never marked succeeded unrun",
        (Edit("notifyq/registry.py", "            if _is_generator(fn):", "            if False:"),),
        ("tests/unit/test_hostile_config.py::test_a_generator_handler_is_refused_at_registration",),
    ),
    Mutation(
        "enqueue_stores_nan",
        "enqueue() refuses NaN and Infinity in a payload, as SQL does",
        (Edit("notifyq/client.py", 'if b"null" in data:', "if False:"),),
        (
            "tests/acceptance/test_hostile_config.py::test_enqueue_refuses_non_finite_floats_and_writes_nothing",
        ),
    ),
    Mutation(
        "update_guard_off",
        "a producer's UPDATE of its columns is refused like an INSERT, naming the column",
        (
            Edit(
                GUARDS_SQL,
                "    WHEN (NEW.queue IS DISTINCT FROM OLD.queue\n",
                "    WHEN (false AND NEW.queue IS DISTINCT FROM OLD.queue\n",
            ),
        ),
        (
            "tests/integration/test_producer_guards.py::test_updates_of_producer_columns_are_refused_like_inserts",
        ),
    ),
    Mutation(
        "tasks_max_attempts_wins",
        "a producer's explicit max_attempts wins over the task's",
        (
            Edit(
                WORKER_SQL,
                "        j.max_attempts,\n        (SELECT o.max_attempts",
                "        (SELECT o.max_attempts",
                "claim_lease",
            ),
        ),
        (
            "tests/integration/test_producer_guards.py::test_the_claim_writes_the_producers_value_else_the_tasks_else_the_default",
        ),
    ),
    Mutation(
        "outcome_waits_for_a_locked_row",
        "a row another session holds locked stalls its own outcome only, never the batch",
        (
            Edit(
                WORKER_SQL,
                "    FOR NO KEY UPDATE OF j SKIP LOCKED\n) AS j",
                "    FOR NO KEY UPDATE OF j\n) AS j",
                "lock_batch",
            ),
        ),
        (f"{HOSTILE}::test_a_row_locked_by_another_session_stalls_only_its_own_job",),
    ),
    Mutation(
        "guard_update_skips_payload",
        "a producer's UPDATE of the payload is refused beyond 1 MiB, like an INSERT",
        (
            Edit(
                GUARDS_SQL,
                "CREATE TRIGGER jobs_guard_update_payload BEFORE UPDATE OF payload ON notifyq.jobs\n"
                "    FOR EACH ROW EXECUTE FUNCTION notifyq.jobs_guard();",
                "",
            ),
        ),
        (
            "tests/integration/test_producer_guards.py::test_updates_of_producer_columns_are_refused_like_inserts",
        ),
    ),
    Mutation(
        "guard_update_on_every_row",
        "the daemon's own updates never call the guard's plpgsql",
        (
            Edit(
                GUARDS_SQL,
                "    WHEN (NEW.queue IS DISTINCT FROM OLD.queue\n",
                "    WHEN (true OR NEW.queue IS DISTINCT FROM OLD.queue\n",
            ),
        ),
        ("tests/integration/test_producer_guards.py::test_the_daemons_updates_never_call_the_guard",),
    ),
    Mutation(
        "guard_accepts_explicit_ids",
        "an id the identity did not hand out is refused, so later producers' inserts never collide",
        (
            Edit(
                GUARD_FN_SQL,
                "IF NEW.id > coalesce(pg_sequence_last_value('notifyq.jobs_id_seq'::regclass), 0) THEN",
                "IF false THEN",
            ),
        ),
        ("tests/integration/test_producer_guards.py::test_explicit_ids_are_refused",),
    ),
    Mutation(
        "guard_run_at_range",
        "a run_at beyond what drivers decode is refused at INSERT, naming the column",
        (
            Edit(
                GUARD_FN_SQL,
                "    IF NEW.run_at NOT BETWEEN notifyq.min_run_at() AND notifyq.max_run_at() THEN",
                "    IF false THEN",
            ),
        ),
        (
            "tests/integration/test_producer_guards.py::"
            "test_run_at_beyond_what_drivers_decode_is_refused_naming_the_column",
        ),
    ),
    Mutation(
        "enqueue_null_priority_refused",
        "NULL means the default for every optional argument of enqueue()",
        (Edit(GUARDS_SQL, "            coalesce(enqueue.priority, 0),", "            enqueue.priority,"),),
        (
            "tests/integration/test_producer_guards.py::test_null_means_the_default_for_every_optional_enqueue_argument",
        ),
    ),
    Mutation(
        "schedule_tick_compare_and_set",
        "of several daemons on one tick, only the one that moved the schedule's last_tick makes its job",
        (
            Edit(
                SCHEDULES_SQL,
                "      AND s.last_tick IS NOT DISTINCT FROM $2::timestamptz\n"
                "      AND s.updated_at = $3::timestamptz\n"
                "      AND (s.last_tick IS NULL OR s.last_tick < $4::timestamptz)\n",
                "",
                "enqueue_ticks",
            ),
        ),
        (f"{SCHEDULES}::test_racing_schedulers_make_one_job_per_tick",),
    ),
    Mutation(
        "schedule_tick_unique_key",
        "one job per (schedule, tick) in the jobs table, whatever happens to the schedule row",
        (
            Edit(
                SCHEDULES_MIGRATION,
                "CREATE UNIQUE INDEX jobs_tick_key ON",
                "CREATE INDEX jobs_tick_key ON",
            ),
            Edit(
                SCHEDULES_SQL,
                "    ON CONFLICT (schedule, schedule_tick) WHERE schedule IS NOT NULL DO NOTHING\n",
                "",
                "enqueue_ticks",
            ),
        ),
        (f"{SCHEDULES}::test_the_unique_key_is_the_second_guard",),
    ),
    Mutation(
        "schedule_since_moves",
        "a re-enabled schedule, or one whose rule changed, never runs ticks from before that moment",
        (
            Edit(
                SCHEDULES_MIGRATION,
                "    ELSIF NEW.cron IS DISTINCT FROM OLD.cron OR",
                "    ELSIF false AND (NEW.cron IS DISTINCT FROM OLD.cron OR",
            ),
            Edit(
                SCHEDULES_MIGRATION,
                "          OR (NEW.enabled AND NOT OLD.enabled) THEN",
                "          OR (NEW.enabled AND NOT OLD.enabled)) THEN",
            ),
        ),
        (f"{SCHEDULES}::test_a_re_enabled_or_changed_schedule_never_backfills",),
    ),
    Mutation(
        "schedule_row_lock_skipped",
        "a schedule row held locked by someone else delays only its own schedule, never the pass",
        (
            Edit(
                SCHEDULES_SQL,
                "FOR NO KEY UPDATE SKIP LOCKED",
                "FOR NO KEY UPDATE",
                "enqueue_ticks",
            ),
        ),
        (f"{SCHEDULES}::test_a_schedule_row_held_locked_delays_only_its_own_schedule",),
    ),
    Mutation(
        "schedule_backfill_bytes",
        "a backfill's statements carry a bounded amount of payload, whatever its size",
        (
            Edit(
                "notifyq/worker/scheduler.py",
                "TICK_BYTES_PER_STATEMENT // max(payload_bytes, 1)",
                "MAX_TICKS_PER_PASS",
            ),
        ),
        (f"{SCHEDULES}::test_a_backfill_of_large_payloads_goes_in_statements_of_bounded_size",),
    ),
    Mutation(
        "callback_ssrf_wrapped_v4",
        "an IPv4 address wrapped in IPv6 (mapped, NAT64, 6to4) is judged as the address it reaches",
        (
            Edit(
                "notifyq/callbacks/addresses.py",
                "        inner = embedded_v4(address)\n",
                "        inner = None\n",
            ),
        ),
        ("tests/unit/test_callback_addresses.py",),
    ),
    Mutation(
        "callback_signature_covers_id_and_time",
        "a callback's signature covers its id and timestamp as well as its body (Standard Webhooks)",
        (
            Edit(
                "notifyq/callbacks/signing.py",
                'signed = f"{msg_id}.{timestamp}.".encode() + body',
                "signed = body",
            ),
        ),
        ("tests/unit/test_callback_signing.py",),
    ),
    Mutation(
        "api_token_scope",
        "a token reaches the jobs and schedules of its own queues only",
        (
            Edit(
                "notifyq/api/tokens.py",
                'return "*" in self.queues or queue in self.queues',
                "return True",
            ),
        ),
        ("tests/integration/test_api.py::test_tokens_are_required_and_scoped",),
    ),
)
