"""Joins that loop over their build side (cross joins, nested-loop joins) made stoppable.

DataFusion stops a dropped query's tasks at their next yield to tokio, and its cooperative scheduling
(`CooperativeExec` over each data source, tokio's task budget) makes a task yield every so many input
batches. A join that loops over its build side does all the work of one probe batch — build rows ×
probe rows — before it polls its input again: with 65,536-row batches, a 1e6 × 1e6 cross join under an
aggregate ran a minute and more between two polls, holding a tokio worker after its deadline (and
with 2 workers, every query needing one waited). Its query is planned again with LOOP_JOIN_BATCH_ROWS
batches, which bounds the work between two polls of the probe input (a 1e6 × 1e6 cross join or
`a.value < b.value` join: stopped within seconds), and with its inputs split in round-robin: fed
through channels, the join's task yields about every probe batch; unsplit, only every 128 (tokio's
task budget), which a query naming one of session.ORDERED_FUNCTIONS (never split otherwise) sometimes
took past 15 s after its deadline. Such a query's rows then come in no set order, as a loop join's
(build rows × probe rows) never were its generator's. Only queries with loop joins pay for this.

Between two yields such a join still holds its worker, and every query needs one (datafusion-python
creates each stream on the runtime): with as many workers as cores (tokio's default), a split loop join
held them all and `SELECT 1` ran past its time limit. The server starts DataFusion's runtime with
WORKERS_PER_CORE workers per core (`TOKIO_WORKER_THREADS`, unless set).
"""

from __future__ import annotations

import os

import datafusion
from datafusion.plan import ExecutionPlan

from spanlake.lakehouse.query import changed_sessions

LOOP_JOIN_BATCH_ROWS = 128
LOOP_JOINS = ("CrossJoinExec", "NestedLoopJoinExec")
WORKERS_PER_CORE = 3


def executable_plan(ctx: datafusion.SessionContext, df: datafusion.DataFrame) -> ExecutionPlan:
    """The physical plan of `df` to execute in `ctx`: with small batches and split inputs if it has a loop join."""
    plan = df.execution_plan()
    if not has_loop_join(plan):
        return plan
    # A DataFrame plans in the session state it was made in: the statement changes the session, and a
    # DataFrame of the same logical plan (its table functions are not run again) plans in it.
    changed_sessions.mark_changed(ctx)  # its settings stay for the queries it would serve next
    ctx.sql(f"SET datafusion.execution.batch_size = {LOOP_JOIN_BATCH_ROWS}")
    ctx.sql("SET datafusion.optimizer.enable_round_robin_repartition = true")
    return ctx.create_dataframe_from_logical_plan(df.logical_plan()).execution_plan()


def has_loop_join(plan: ExecutionPlan) -> bool:
    """Whether any operator of the plan is a cross or nested-loop join."""
    pending = [plan]
    while pending:
        node = pending.pop()
        if node.display().startswith(LOOP_JOINS):
            return True
        pending += node.children()
    return False


def reserve_datafusion_workers() -> None:
    """Sets DataFusion's worker threads (tokio's TOKIO_WORKER_THREADS, unless set) to WORKERS_PER_CORE
    per core; before DataFusion's runtime starts (its first query)."""
    os.environ.setdefault("TOKIO_WORKER_THREADS", str(WORKERS_PER_CORE * (os.cpu_count() or 1)))
