"""The starter screens: the fixed pages' questions (processes, a process's logs, its metrics) as
notebooks a user adds to the screens with one click, then copies and changes."""

from __future__ import annotations

from typing import Any

_PROCESS = {
    "name": "process",
    "type": "variable",
    "variableType": "combobox",
    "sql": "SELECT process_id FROM processes ORDER BY last_update_time DESC LIMIT 100",
}

STARTER_SCREENS: tuple[dict[str, Any], ...] = (
    {
        "name": "processes",
        "screen_type": "notebook",
        "config": {
            "timeRangeFrom": "now-1h",
            "timeRangeTo": "now",
            "cells": [
                {
                    "name": "processes",
                    "type": "table",
                    "sql": "SELECT process_id, exe, computer, username, start_time, last_update_time FROM processes"
                    " ORDER BY last_update_time DESC LIMIT 100",
                }
            ],
        },
    },
    {
        "name": "process-logs",
        "screen_type": "notebook",
        "config": {
            "timeRangeFrom": "now-1h",
            "timeRangeTo": "now",
            "cells": [
                _PROCESS,
                {"name": "max_level", "type": "variable", "variableType": "text", "defaultValue": "4"},
                {
                    "name": "logs",
                    "type": "log",
                    "sql": "SELECT time, level, target, msg FROM view_instance('log_entries', '$process')"
                    " WHERE level <= $max_level ORDER BY time DESC LIMIT 500",
                },
            ],
        },
    },
    {
        "name": "process-metrics",
        "screen_type": "notebook",
        "config": {
            "timeRangeFrom": "now-1h",
            "timeRangeTo": "now",
            "cells": [
                _PROCESS,
                {
                    "name": "metric",
                    "type": "variable",
                    "variableType": "combobox",
                    "sql": "SELECT DISTINCT name FROM view_instance('measures', '$process') ORDER BY name",
                },
                {
                    "name": "values",
                    "type": "chart",
                    "sql": "SELECT time, value FROM view_instance('measures', '$process') WHERE name = '$metric'"
                    " ORDER BY time",
                },
            ],
        },
    },
)
