"""Group commit of fenced state changes on PostgreSQL: the changes that many executions ask
for in the same turn of the event loop go to the database as one statement.

With hundreds of executions in flight, each state change used to be its own statement: its own
round trip, its own executor start-up in PostgreSQL, and its own pass through asyncpg. Most of
that cost is per statement, not per row. Here each change is still fenced on its own (its
execution's owner and status, its run's expected status), still bumps its own execution's
version, and still answers its own caller with that version or None; only the carriage is
shared. Changes of one execution never share a statement (its runner waits for each write
before the next), and if one ever did, the later one goes in the next statement, in order.

A change here touches at most one run (plus, optionally, the execution's own columns): the
shapes the engine writes on its hot path. Anything larger goes through a transaction.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from tortoise.backends.base.client import BaseDBAsyncClient

from models.statuses import IN_PROGRESS

# Run columns a change may set, with their SQL types; JSON columns travel as text.
RUN_COLUMNS = {
    "status": "text",
    "attempts": "int",
    "interruptions": "int",
    "started_at": "timestamptz",
    "completed_at": "timestamptz",
    "error": "text",
    "output": "text",
    "rendered": "text",
}
EXECUTION_COLUMNS = {"status": "text", "completed_at": "timestamptz", "error": "text"}
# Changes in one statement at most. Past a few hundred a batch saves little more, and every
# execution in it waits for the whole statement (its rows stay locked until it ends).
MAX_BATCH = 250
# Sends in flight at most; changes asked for meanwhile wait for one to end and go together.
# Under load this is what makes the batches: a flush per turn of the loop sent a statement of
# two or three changes each time, and each statement costs PostgreSQL and asyncpg far more
# than a row in it. Two, not one: the next batch is built while the last one's answer travels.
MAX_IN_FLIGHT = 2


def _statement() -> str:
    """One statement for any batch: the changes as one JSON array of rows, with for every
    column a flag saying whether the change sets it (a change sets only some columns).

    JSON, not an array parameter per column: asyncpg encoded 23 arrays for every statement,
    which cost the execution service more than the rest of the write (0.19 ms a statement of 7
    changes, against 0.10 as JSON), and PostgreSQL took longer to unnest them (0.8 ms against
    0.45). The run ids still come as an array, for the index lookup on task_runs."""
    columns = [("execution_id", "int"), ("run_id", "int"), ("expected", "text")]
    columns += [(f"s_{name}", "bool") for name in RUN_COLUMNS]
    columns += [(f"v_{name}", kind) for name, kind in RUN_COLUMNS.items()]
    columns += [(f"s_x_{name}", "bool") for name in EXECUTION_COLUMNS]
    columns += [(f"v_x_{name}", kind) for name, kind in EXECUTION_COLUMNS.items()]
    row = ", ".join(f"{name} {kind}" for name, kind in columns)
    run_sets = ", ".join(
        f"{name} = CASE WHEN d.s_{name} THEN d.v_{name} ELSE r.{name} END" for name in RUN_COLUMNS
    )
    execution_sets = ", ".join(
        f"{name} = CASE WHEN d.s_x_{name} THEN d.v_x_{name} ELSE e.{name} END"
        for name in EXECUTION_COLUMNS
    )
    # A change is all or nothing. The fence passes only while the owner holds the lease, the
    # execution is in progress and the run is in an expected status; the run changes only
    # where its fence passed (the join on `fence`). Every other writer (cancel, take-over)
    # changes the execution row first, and the fence holds that row's lock from its check to
    # the end of the statement, so the run cannot move in between. A flag a change leaves out
    # is null, which CASE takes as false: the column keeps its value.
    #
    # `ready` checks each change's run once, materialized: inlined into the fence, the planner
    # (which expects one in-progress execution per owner) put the change list inside a nested
    # loop over executions and ran that check once per pair, quadratic in the batch size.
    # And the fence finds each execution by its id from `ready`: with `e.id = ANY(...)` beside
    # the join, the planner scanned the executions by that list and `ready` once for each of
    # them, again quadratic (250 changes took 70 ms, 53 of them in that loop). The plan was
    # checked with 60,000 executions: `ready` outer, the primary key probed once per change.
    return (
        f"WITH d AS (SELECT * FROM jsonb_to_recordset($2::jsonb) AS d({row})), "
        "ready AS MATERIALIZED (SELECT * FROM d WHERE d.run_id IS NULL OR EXISTS ("
        "SELECT 1 FROM task_runs x WHERE x.id = d.run_id "
        "AND x.status = ANY(string_to_array(d.expected, ',')))), "
        f"fence AS (UPDATE executions e SET version = e.version + 1, {execution_sets} "
        "FROM ready d WHERE e.id = d.execution_id "
        f"AND e.lease_owner = $1 AND e.status = '{IN_PROGRESS}' "
        "RETURNING e.id, e.version), "
        f"changed AS (UPDATE task_runs r SET {run_sets} "
        "FROM d JOIN fence f ON f.id = d.execution_id "
        "WHERE r.id = d.run_id AND r.id = ANY($3::int[]) "
        "AND r.status = ANY(string_to_array(d.expected, ',')) RETURNING r.id) "
        "SELECT d.execution_id, f.version, "
        "(d.run_id IS NULL OR d.run_id IN (SELECT id FROM changed)) AS applied "
        "FROM d LEFT JOIN fence f ON f.id = d.execution_id"
    )


STATEMENT = _statement()


@dataclass
class Change:
    execution_id: int
    owner: str
    run_id: int | None
    expected: Sequence[str]
    run_values: Mapping[str, Any]
    execution_values: Mapping[str, Any]
    answer: asyncio.Future[int | None]


def single_statement(change: Change) -> tuple[str, list[Any]]:
    """One change as a statement that sets only its own columns (a few shapes, each prepared
    once per connection), answering in the batch statement's terms."""
    arguments: list[Any] = [change.execution_id, change.owner]

    def mark(value: Any) -> str:
        arguments.append(value)
        return f"${len(arguments)}"

    sets = ["version = version + 1"]
    sets += [f"{name} = {mark(value)}" for name, value in change.execution_values.items()]
    fence = (
        f"UPDATE executions SET {', '.join(sets)} "
        f"WHERE id = $1 AND lease_owner = $2 AND status = '{IN_PROGRESS}'"
    )
    if change.run_id is None:
        sql = (
            f"WITH fence AS ({fence} RETURNING version) "
            "SELECT $1::int AS execution_id, (SELECT version FROM fence), true AS applied"
        )
        return sql, arguments
    run_id, expected = mark(change.run_id), mark(list(change.expected))
    assignments = [f"{name} = {mark(value)}" for name, value in change.run_values.items()]
    in_expected = f"id = {run_id} AND status = ANY({expected}::varchar[])"
    sql = (
        f"WITH fence AS ({fence} AND EXISTS (SELECT 1 FROM task_runs WHERE {in_expected}) "
        "RETURNING version), "
        f"changed AS (UPDATE task_runs SET {', '.join(assignments)} WHERE {in_expected} "
        "AND EXISTS (SELECT 1 FROM fence) RETURNING id) "
        "SELECT $1::int AS execution_id, (SELECT version FROM fence), "
        "EXISTS (SELECT 1 FROM changed) AS applied"
    )
    return sql, arguments


def _arguments(owner: str, batch: Sequence[Change]) -> list[Any]:
    rows = []
    for change in batch:
        row: dict[str, Any] = {
            "execution_id": change.execution_id,
            "run_id": change.run_id,
            "expected": ",".join(change.expected),
        }
        for name, value in change.run_values.items():
            row[f"s_{name}"], row[f"v_{name}"] = True, value
        for name, value in change.execution_values.items():
            row[f"s_x_{name}"], row[f"v_x_{name}"] = True, value
        rows.append(row)
    # Naive moments are UTC, as asyncpg takes them.
    changes = orjson.dumps(rows, option=orjson.OPT_NAIVE_UTC).decode()
    return [owner, changes, [change.run_id for change in batch]]


class ChangeBatcher:
    """Collects changes during one turn of the loop and sends them as one statement each
    (one per owner: the fence compares with a single owner)."""

    def __init__(self, connection: BaseDBAsyncClient) -> None:
        self._connection = connection
        self._waiting: list[Change] = []
        self._sending: set[asyncio.Task[None]] = set()  # the loop holds tasks weakly
        self._flush_due = False

    async def apply(
        self,
        execution_id: int,
        owner: str,
        run_id: int | None,
        expected: Sequence[str],
        run_values: Mapping[str, Any],
        execution_values: Mapping[str, Any],
    ) -> int | None:
        # Column names become SQL text: only the known ones, whatever the caller.
        unknown = (set(run_values) - set(RUN_COLUMNS)) | (
            set(execution_values) - set(EXECUTION_COLUMNS)
        )
        if unknown:
            raise ValueError(f"not a column a state change may set: {sorted(unknown)}")
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[int | None] = loop.create_future()
        self._waiting.append(
            Change(execution_id, owner, run_id, expected, run_values, execution_values, answer)
        )
        self._flush_soon()
        return await answer

    def _flush_soon(self) -> None:
        if self._waiting and not self._flush_due and len(self._sending) < MAX_IN_FLIGHT:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_due = False
        waiting, self._waiting = self._waiting, []
        task = asyncio.create_task(self._send_all(_batches(waiting)))
        self._sending.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        self._flush_soon()

    async def _send_all(self, rounds: list[list[list[Change]]]) -> None:
        # Round by round: a round holds a later change of an execution that an earlier round
        # holds. The statements of one round touch distinct executions and go together.
        try:
            for statements in rounds:
                await asyncio.gather(*(self._send(batch) for batch in statements))
        finally:
            for statements in rounds:  # left unsent when this task was cancelled
                for batch in statements:
                    for change in batch:
                        if not change.answer.done():
                            change.answer.cancel()

    async def _send(self, batch: list[Change]) -> None:
        try:
            if len(batch) == 1:
                # Alone, a change goes as a statement of its own shape: the batch statement
                # costs PostgreSQL about a millisecond to plan, which only a batch repays.
                sql, arguments = single_statement(batch[0])
            else:
                sql, arguments = STATEMENT, _arguments(batch[0].owner, batch)
            rows = await self._connection.execute_query_dict(sql, arguments)
        except asyncio.CancelledError as exc:
            for change in batch:
                if not change.answer.done():
                    change.answer.set_exception(exc)
            raise
        except Exception as exc:
            if len(batch) > 1:
                # One change the database refuses must not fail the others with it: send
                # each alone, so only its own caller sees the error.
                for change in batch:
                    await self._send([change])
            elif not batch[0].answer.done():
                batch[0].answer.set_exception(exc)
            return
        versions = {
            int(row["execution_id"]): int(row["version"])
            for row in rows
            if row["version"] is not None and row["applied"]
        }
        for change in batch:
            if not change.answer.done():
                change.answer.set_result(versions.get(change.execution_id))


def _batches(changes: list[Change]) -> list[list[list[Change]]]:
    """Rounds of statements, keeping the order of arrival: round n holds the n-th change of
    each execution; within a round, one statement per owner (the fence compares with one) and
    at most MAX_BATCH changes each."""
    rounds: list[dict[str, list[list[Change]]]] = []
    seen: dict[int, int] = {}
    for change in changes:
        index = seen.get(change.execution_id, 0)
        seen[change.execution_id] = index + 1
        if index == len(rounds):
            rounds.append({})
        statements = rounds[index].setdefault(change.owner, [[]])
        if len(statements[-1]) == MAX_BATCH:
            statements.append([])
        statements[-1].append(change)
    return [[batch for batches in round_.values() for batch in batches] for round_ in rounds]


_batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ChangeBatcher] = (
    weakref.WeakKeyDictionary()
)


def batcher(connection: BaseDBAsyncClient) -> ChangeBatcher:
    """This event loop's batcher (a batcher's futures belong to one loop)."""
    loop = asyncio.get_running_loop()
    found = _batchers.get(loop)
    if found is None or found._connection is not connection:
        found = _batchers[loop] = ChangeBatcher(connection)
    return found


__all__ = ["STATEMENT", "ChangeBatcher", "batcher"]
