"""The `log_stats` view (global): the number of log entries per minute, process, level and target, a
SQL-defined view shipped as a built-in definition, micromegas's `log_stats_view.rs` queries verbatim:

* extract: the bucket's `log_entries` counted per (minute, process, level, target);
* source count: the objects of the bucket's `log` blocks;
* merge: `count` summed per group, when partitions are merged and when a query reads several.

The schema is what DataFusion gives the extract (time_bin nullable, as `date_bin` returns).
Maintained on the daemon's schedules after the views it reads (update group 3000), no JIT.
"""

from __future__ import annotations

from functools import partial

import pyarrow as pa

from spanlake.views.merge_query import merge_with_query
from spanlake.views.schema_types import DICT_UTF8, TIMESTAMP, optional, required
from spanlake.views.view import DAY_SECONDS, SqlSource, View

VIEW_SET_NAME = "log_stats"
FILE_SCHEMA_HASH = bytes([1])
UPDATE_GROUP = 3000

SCHEMA = pa.schema(
    [
        optional("time_bin", TIMESTAMP),
        required("process_id", DICT_UTF8),
        required("level", pa.int32()),
        required("target", DICT_UTF8),
        required("count", pa.int64()),
    ]
)

EXTRACT_QUERY = """
        SELECT date_bin('1 minute', time) AS time_bin, process_id, level, target, count(*) AS count
        FROM log_entries
        WHERE insert_time >= '{begin}'
        AND insert_time < '{end}'
        GROUP BY process_id, level, target, time_bin
        ORDER BY time_bin, process_id, level, target
    """
COUNT_SRC_QUERY = """
        SELECT sum(nb_objects) AS count
        FROM blocks
        WHERE array_has("streams.tags", 'log')
        AND insert_time >= '{begin}'
        AND insert_time < '{end}'
    """
MERGE_PARTITIONS_QUERY = """
        SELECT time_bin, process_id, level, target, sum(count) AS count
        FROM {source}
        GROUP BY process_id, level, target, time_bin
        ORDER BY time_bin, process_id, level, target
    """
# What `list_view_set_definitions()` shows (and `micromegas-views pull log_stats` writes).
DEFINITION_SQL = f"""CREATE MATERIALIZED VIEW {VIEW_SET_NAME} WITH (
    extract_query = $${EXTRACT_QUERY}$$,
    count_src_query = $${COUNT_SRC_QUERY}$$,
    merge_partitions_query = $${MERGE_PARTITIONS_QUERY}$$,
    update_group = {UPDATE_GROUP},
    time_column = 'time_bin'
)"""

merge = partial(merge_with_query, MERGE_PARTITIONS_QUERY, SCHEMA)

VIEW = View(
    name=VIEW_SET_NAME,
    schema=SCHEMA,
    schema_hash=FILE_SCHEMA_HASH,
    instance_kind=None,
    has_global_instance=True,
    stream_tags=("log",),
    time_columns=("time_bin", "time_bin"),
    merge=merge,
    max_partition_seconds=DAY_SECONDS,
    sql=SqlSource(
        EXTRACT_QUERY.strip(), COUNT_SRC_QUERY.strip(), MERGE_PARTITIONS_QUERY.strip(), UPDATE_GROUP, DEFINITION_SQL
    ),
)
