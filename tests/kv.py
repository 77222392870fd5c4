"""A small key-value service and a client of it: the two containers of the tests' multi-container
units. Nothing but the socket module (the base image has python3-minimal).

The service: "SET key value" answers OK, "GET key" the value (or NONE); KV_SEED holds the
key=value pairs it starts with. The client SETs every "key value" line of /input/chunk, GETs
them back and the seeded "answer" from the service it knows only by name (KV_HOST, default
kv), and writes the answers to /output/result. Nothing waits for the service to listen, so
the client retries for KV_WAIT seconds (default 20)."""

SERVICE = """\
import os, socket
data = dict(p.split("=", 1) for p in os.environ.get("KV_SEED", "").split(",") if p)
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("", int(os.environ.get("KV_PORT", "7000"))))
server.listen()
while True:
    conn, _ = server.accept()
    with conn, conn.makefile("rwb") as f:
        for line in f:
            verb, _, rest = line.decode().strip().partition(" ")
            if verb == "SET":
                key, _, value = rest.partition(" ")
                data[key] = value
                f.write(b"OK\\n")
            else:
                f.write((data.get(rest, "NONE") + "\\n").encode())
            f.flush()
"""

QUERY = """\
import os, socket, time
deadline = time.monotonic() + float(os.environ.get("KV_WAIT", "20"))
while True:
    try:
        conn = socket.create_connection((os.environ.get("KV_HOST", "kv"), 7000), timeout=2)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.1)
pairs = [line.split(" ", 1) for line in open("/input/chunk").read().splitlines() if line]
with conn, conn.makefile("rwb") as f:
    def ask(line):
        f.write(line.encode() + b"\\n")
        f.flush()
        return f.readline().decode().strip()
    for key, value in pairs:
        assert ask(f"SET {key} {value}") == "OK"
    answers = [f"{key}={ask('GET ' + key)}" for key, _ in pairs] + ["answer=" + ask("GET answer")]
with open("/output/result", "w") as out:
    out.write("\\n".join(answers) + "\\n")
"""
