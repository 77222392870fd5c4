"""The bounds the master and the daemon both apply, written once: a value one side accepts
is a value the other side accepts too, and a limit raised here is raised for both."""

import re

# what msgpack, SQLite and MongoDB (BSON) all store as an integer
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# a client's name as operators see it: 1-128 printable characters
NAME_RE = re.compile(r"[^\x00-\x1f\x7f]{1,128}")
# an environment variable's (or a sweep parameter's) name: letters, digits and '_', no leading digit
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")

# the end of a unit's stderr kept with its result: what a client reports, what the master stores
STDERR_TAIL = 4096

# units one client runs at once (its slots), and the containers its heartbeat may list
MIN_SLOTS, MAX_SLOTS = 1, 4096

# results (or attempts released) in one request
MAX_BATCH = 10_000
