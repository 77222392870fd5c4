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

# strings and collections in protocol messages (protocol/messages.py applies them in from_wire):
# a name or an id, unless a message's table says more
MAX_STR = 256
# entries of a list or map, unless a message's table says more
MAX_ITEMS = 1024
# one argument of a command or one environment value: Linux's own bound on a string passed
# to exec (MAX_ARG_STRLEN), so nothing longer could run anyway
MAX_ARG = 128 * 1024
# a URL a grant names for an input
MAX_URL = 2048
# images a lease request may say the client has cached
MAX_IMAGES = 4096
# grants in one lease (what a lease request's max_units may ask)
MAX_LEASE = 1000
# the largest integer accepted as text (a query argument, a header): 19 digits hold any int64,
# and Python refuses to parse a few thousand digits at all
MAX_INT_DIGITS = 19
# input files of one unit: a reduce unit has one per map unit of its job
MAX_INPUTS = 1_000_000
