"""``dockercomp``: one entry point, a subcommand per task. Parse, build settings, call the
library; exit 0 on success, 1 when the operation failed, 2 on bad usage or bad input."""

import argparse
import asyncio
import importlib.util
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from dockercomp import resources, terminal
from dockercomp.client.settings import ClientSettings
from dockercomp.protocol.errors import ProtocolError
from dockercomp.protocol.transport import printable
from dockercomp.scientist import Master, MasterError, default_server, read_jobfile
from dockercomp.server.errors import ServerError
from dockercomp.server.settings import ServerSettings
from dockercomp.settings import SettingsError, add_flags, flag_values, load_settings

log = logging.getLogger("dockercomp")
# What each extra of pyproject.toml installs beyond the base: the commands of a role check for
# them first, so a missing one is a line saying what to install, not an ImportError's traceback.
EXTRAS = {"server": ("tornado", "pymongo"), "client": ("docker",)}


class UsageError(Exception):
    """Bad usage or bad input: exit code 2."""


class MissingExtra(Exception):
    """This install lacks the extra a command needs: exit code 1."""


def _missing(extra: str) -> list[str]:
    return [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]


def _require(extra: str) -> None:
    missing = _missing(extra)
    if missing:
        raise MissingExtra(f"this command needs {', '.join(missing)}: pip install 'dockercomp[{extra}]'")


class PrintableFormatter(logging.Formatter):
    """Log lines fit for a terminal: what a master sent (an image, an id, an error) and got
    into a line can neither repaint the terminal nor forge another line."""

    def format(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord(record.__dict__)
        record.msg, record.args = printable(record.getMessage()), None  # one line, whatever it holds
        return super().format(record)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(PrintableFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), handlers=[handler])
    try:
        return args.run(args) or 0
    except (UsageError, ProtocolError, SettingsError) as exc:
        print(f"dockercomp: {exc}", file=sys.stderr)
        return 2
    except MasterError as exc:
        print(f"dockercomp: {exc}", file=sys.stderr)
        return 2 if exc.bad_input else 1
    except MissingExtra as exc:
        print(f"dockercomp: {exc}", file=sys.stderr)
        return 1
    except ServerError as exc:  # the master's refusals at start: its store's URL, schema, server version
        print(f"dockercomp: {exc}", file=sys.stderr)
        return 2 if 400 <= exc.status < 500 else 1
    except KeyboardInterrupt:
        return 130


# the job control verbs (server/lifecycle.py Verb), each a command of its own
JOB_VERBS = {
    "suspend": "suspend a job: no more leases; the volunteers pause its running containers",
    "resume": "resume a suspended job: its containers go on, its units are leased again",
    "hold": "hold a job that has not started: it starts nothing until released",
    "release": "release a held job",
    "cancel": "cancel a job: its running containers are stopped and removed; what finished stays (results --partial)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dockercomp", description="Volunteer computing on Docker.")
    parser.add_argument("--log-level", default=os.environ.get("DOCKERCOMP_LOG_LEVEL", "info"),
                        choices=["debug", "info", "warning", "error"])  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Callable[[argparse.Namespace], int | None], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(run=run)
        return p

    p = command("server", cmd_server, "run the master")
    add_flags(p, ServerSettings)
    p.add_argument("--config", help="settings file (TOML, a [server] table)")

    p = command("store", cmd_store, "the master's store: bring its schema up to this version")
    actions = p.add_subparsers(dest="action", required=True, metavar="{migrate}")
    about = "apply the schema steps the store lacks (safe beside running masters)"
    m = actions.add_parser("migrate", help=about, description=about)
    m.add_argument("--store", default="", help="sqlite:///PATH (default: the data directory's) or mongodb://HOST/DB")
    m.add_argument("--data-dir", default="", help="the master's data directory (for the default SQLite store)")
    m.add_argument("--config", help="settings file (TOML, a [server] table): its store and data_dir")
    m.add_argument("--dry-run", action="store_true", help="say which steps would be applied; change nothing")
    m.add_argument("--json", action="store_true")

    p = command("submit", cmd_submit, "submit a job: chunk and upload the input, create the job")
    p.add_argument("jobfile")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="input files (none for a job with a sweep)")
    _server_arg(p)
    p.add_argument("--wait", action="store_true", help="wait until the job ends, with a progress bar")
    p.add_argument("--json", action="store_true", help='print {"job": ID} (and the final state with --wait)')
    p.add_argument("--chunk-on-master", action="store_true", help="send inputs whole; the master chunks them")
    p.add_argument("--hold", action="store_true", help="start no unit until `dockercomp release JOB`")

    p = command("status", cmd_status, "show a job's state (and its DRMAA2 state) and its units per state")
    p.add_argument("job")
    _server_arg(p)
    p.add_argument("--json", action="store_true")

    for verb, help in JOB_VERBS.items():
        p = command(verb, cmd_control, help)
        p.add_argument("job")
        _server_arg(p)
        p.add_argument("--json", action="store_true")

    p = command("units", cmd_units, "a job's units: state, attempts, and what went wrong (error, exit code, stderr)")
    p.add_argument("job")
    p.add_argument("--failed", action="store_true", help="only units that failed or that an attempt went wrong on")
    _server_arg(p)
    p.add_argument("--json", action="store_true")

    p = command("logs", cmd_logs, "one unit's attempts: where each ran, how it ended, the end of its stderr")
    p.add_argument("job")
    p.add_argument("unit", help="the unit's number (as `dockercomp units` shows it) or its id, JOB.NUMBER")
    _server_arg(p)
    p.add_argument("--json", action="store_true")

    p = command("results", cmd_results, "download a job's result")
    p.add_argument("job")
    p.add_argument("-o", "--output", required=True, help="file to write ('-' for standard output)")
    p.add_argument("--partial", action="store_true", help="what is done so far, even if the job is not")
    _server_arg(p)

    p = command("jobs", cmd_jobs, "list jobs, newest first")
    _server_arg(p)
    p.add_argument("--json", action="store_true")

    p = command("clients", cmd_clients, "list volunteer clients")
    _server_arg(p)
    p.add_argument("--json", action="store_true")

    p = command("keys", cmd_keys, "make, list and revoke tokens (the operator's)")
    actions = p.add_subparsers(dest="action", required=True, metavar="{create,list,revoke}")
    k = actions.add_parser("create", help="make a token; it is printed once, alone on the last line")
    k.add_argument("name", metavar="NAME")
    k.add_argument("--role", required=True, choices=["scientist", "volunteer", "operator"])
    k.add_argument("--expires", help="lifetime, e.g. 30d or 12h (default: until revoked)")
    _server_arg(k)
    k = actions.add_parser("list", help="every key, its role and state (never a token)")
    _server_arg(k)
    k.add_argument("--json", action="store_true")
    k = actions.add_parser("revoke", help="revoke a key: an account takes its machines along; a client id, one machine")
    k.add_argument("name", metavar="NAME")
    _server_arg(k)

    p = command("images", cmd_images, "push workload images to the master, sign them, list them")
    actions = p.add_subparsers(dest="action", required=True, metavar="{push,sign,list}")
    i = actions.add_parser("push", help="upload an image of the local engine (only the layers the master lacks)")
    i.add_argument("image", metavar="IMAGE", help="a tag or an image id of the local Docker engine")
    _server_arg(i)
    i.add_argument("--json", action="store_true")
    i = actions.add_parser("sign", help="sign a pushed image with your private key (which stays here)")
    i.add_argument("image", metavar="IMAGE", help="the image's id or tag on the master")
    i.add_argument("--key", required=True, metavar="FILE", help="the private key (dockercomp sign keygen)")
    _server_arg(i)
    i = actions.add_parser("list", help="the images the master holds")
    _server_arg(i)
    i.add_argument("--json", action="store_true")

    p = command("sign", cmd_sign, "signing keys for images")
    actions = p.add_subparsers(dest="action", required=True, metavar="{keygen,fingerprint}")
    g = actions.add_parser("keygen", help="make a key pair: FILE (private, 0600) and FILE.pub")
    g.add_argument("file", metavar="FILE", nargs="?", default="dockercomp-signing.key")
    g = actions.add_parser("fingerprint", help="print the fingerprint of each public key in a file")
    g.add_argument("file", metavar="FILE")

    p = command("client", cmd_client, "run the volunteer client daemon (or: client status)")
    add_flags(p, ClientSettings)
    p.add_argument("--config", help="settings file (TOML, a [client] table)")
    actions = p.add_subparsers(dest="client_action", metavar="[status|pause|resume|uninstall]")
    s = actions.add_parser("status", help="show what the daemon runs now", description="show what the daemon runs now")
    s.add_argument("--work-dir", default=argparse.SUPPRESS, help="the daemon's work directory")
    s.add_argument("--json", action="store_true", help="print the daemon's status file as it is")
    for verb, about in (
        ("pause", "pause the running daemon: its running units are paused (not lost), it leases nothing"),
        ("resume", "resume a daemon paused by `client pause`"),
    ):
        s = actions.add_parser(verb, help=about, description=about)
        s.add_argument("--work-dir", default=argparse.SUPPRESS, help="the daemon's work directory")
    u = actions.add_parser("uninstall", help="remove what installer.sh installed (runs its cleanup)",
                           description="remove what installer.sh installed (runs its cleanup)")  # fmt: skip
    u.add_argument("--prefix", help="the install directory (default ~/.local/share/dockercomp)")
    u.add_argument("--purge-docker", action="store_true", help="remove Docker too, when the installer installed it")
    u.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")

    p = command("workloads", cmd_workloads, "list, build or try out the workloads (workloads/NAME/)")
    actions = p.add_subparsers(dest="action", required=True, metavar="{list,build,run}")
    actions.add_parser("list", help="the workloads, their image tags and what they compute")
    b = actions.add_parser("build", help="build workload images offline (the base image first when missing)")
    b.add_argument("names", nargs="*", metavar="NAME", help="workloads to build (default: all)")
    b.add_argument("--push", action="store_true", help="push each image to the master (--server) once built")
    b.add_argument("--sign", metavar="KEYFILE", help="with --push: sign each pushed image with this private key")
    _server_arg(b)
    r = actions.add_parser(
        "run",
        help="run a workload's job here, without a master: its map units, then its reduce",
        description="Run workloads/NAME/job.json on this machine: the input cut as the job says, each unit in a "
        "sandboxed container as a volunteer's daemon runs it, then the reduce step; the result is written out.",
    )
    r.add_argument("name", metavar="NAME")
    r.add_argument("-i", "--input", dest="inputs", nargs="+", action="extend", default=[], metavar="FILE",
                   help="input files, or directories (their files, by name); none for a sweep")  # fmt: skip
    r.add_argument("-o", "--output", default="-", help="file to write the result to (default: standard output)")
    r.add_argument("--reduce", action=argparse.BooleanOptionalAction, default=None,
                   help="run the job's reduce step (default: when it has one), or not")  # fmt: skip
    r.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="set a variable over the job's env")
    r.add_argument("--slots", type=int, default=1, help="units run at once (default 1)")
    r.add_argument("--build", action="store_true", help="rebuild the image first (after editing the workload)")
    return parser


def _server_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server", default=None, help="master URL (default http://$DC_HOST:$DC_PORT or http://127.0.0.1:8080)"
    )
    p.add_argument("--ca", metavar="FILE", default=os.environ.get("DOCKERCOMP_CA") or None,
                   help="PEM CA certificates to trust instead of the system's (default $DOCKERCOMP_CA)")  # fmt: skip
    p.add_argument("--insecure", action="store_true",
                   help="allow plain http:// to a master not on loopback (a lab network)")  # fmt: skip
    p.add_argument("--token", help="your token (default $DOCKERCOMP_TOKEN, else the local master's operator.token)")


def _master(args: argparse.Namespace) -> Master:
    server = args.server or default_server()
    return Master(server, ca=args.ca, insecure=args.insecure, token=_token(args.token, server))


def _token(given: str | None, server: str) -> str:
    """--token, else $DOCKERCOMP_TOKEN, else the operator's token file when the master runs here."""
    if given:
        return given
    if os.environ.get("DOCKERCOMP_TOKEN"):
        return os.environ["DOCKERCOMP_TOKEN"]
    from urllib.parse import urlsplit

    from dockercomp.protocol.transport import is_loopback

    if not is_loopback(urlsplit(server).hostname or ""):
        return ""
    from dockercomp.server.settings import default_data_dir

    data_dir = os.environ.get("DOCKERCOMP_SERVER_DATA_DIR") or default_data_dir()
    try:
        with open(os.path.join(data_dir, "operator.token"), encoding="ascii") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return ""


# -- commands ------------------------------------------------------------------------------


def cmd_server(args: argparse.Namespace) -> int:
    _require("server")
    from dockercomp.server.app import serve

    settings = load_settings(ServerSettings, "server", args.config, flag_values(args, ServerSettings))
    try:
        asyncio.run(serve(settings))
    except OSError as exc:
        print(f"dockercomp: cannot start the master: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    _require("server")
    from dockercomp.server.store import migrate

    flags = {key: value for key, value in (("store", args.store), ("data_dir", args.data_dir)) if value}
    settings = load_settings(ServerSettings, "server", args.config, flags)
    report = asyncio.run(migrate(settings.store_url, settings.data_path, dry_run=args.dry_run))
    steps = ", ".join(report.steps) or "none"
    if args.dry_run:
        text = f"{report.backend} store at schema version {report.from_version}; steps to apply: {steps}"
    elif report.steps:
        text = f"{report.backend} store migrated from version {report.from_version} to {report.to_version}: {steps}"
    else:
        text = f"{report.backend} store is at schema version {report.to_version}: nothing to do"
    _print(args, report.as_dict(), text)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    spec = read_jobfile(args.jobfile)
    if spec.sweep is not None and args.inputs:
        raise UsageError(f"{args.jobfile} is a sweep: its units take their parameters from the sweep, not INPUT files")
    if spec.sweep is None and not args.inputs:
        raise UsageError("give the INPUT files to compute on (only a job file with a sweep needs none)")
    job = _master(args).submit(spec, args.inputs, hold=args.hold, chunk_on_master=args.chunk_on_master, progress=True)
    if not args.wait or args.hold:
        held = ", held until `dockercomp release`" if args.hold else ""
        _print(args, {"job": job.id}, f"job {job.id}: {job.size} units{held}")
        return 0
    if not args.json:
        print(f"job {job.id}: {job.size} units", file=sys.stderr)
    status = job.wait(progress=True)
    _print(args, {"job": job.id, "state": status.state, "units": status.units}, str(status))
    return 0 if status.state == "done" else 1


def cmd_keys(args: argparse.Namespace) -> int:
    scientist = _master(args)
    if args.action == "create":
        key = scientist.create_key(args.name, args.role, args.expires)
        expires = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(key["expires_at"])) if key["expires_at"] else "never"
        print(f"{key['role']} key {key['name']} made (expires: {expires}); its token, shown only now:")
        print(key["token"])
    elif args.action == "list":
        keys = scientist.keys()
        rows = [
            (k["name"], k["role"], k["account"], k["state"], _day(k["expires_at"]) if k["expires_at"] else "-")
            for k in keys
        ]
        _table(args, {"keys": keys}, ("NAME", "ROLE", "ACCOUNT", "STATE", "EXPIRES"), rows)
    else:
        revoked = scientist.revoke_key(args.name)
        print(f"revoked {revoked} key(s)" + (f" of {args.name}" if revoked else f"; {args.name} was revoked already"))
    return 0


def _day(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(timestamp))


def cmd_images(args: argparse.Namespace) -> int:
    scientist = _master(args)
    if args.action == "list":
        found = scientist.images()
        rows = [(i["id"][7:19], ", ".join(i["tags"]) or "-", str(len(i["layers"])), i["owner"],
                 ", ".join(s["key"][:12] for s in i["signatures"]) or "unsigned") for i in found]  # fmt: skip
        _table(args, {"images": found}, ("IMAGE", "TAGS", "LAYERS", "OWNER", "SIGNED BY"), rows)
        return 0
    if args.action == "sign":
        _sign(scientist, scientist.image(args.image)["id"], _signing_key(args.key))
        return 0
    _require("client")
    from dockercomp.client import delivery, images

    try:
        record, sent, size = _push(scientist, args.image, None, quiet=args.json)
    except (images.ImageError, delivery.DeliveryError) as exc:
        print(f"dockercomp: {exc}", file=sys.stderr)
        return 1
    text = f"pushed {record['id']} ({', '.join(record['tags']) or 'no tag'}): {sent} of {size} bytes sent"
    _print(args, {"image": record["id"], "tags": record["tags"], "sent": sent, "size": size}, text)
    return 0


def _push(scientist: Master, ref: str, key: Any, quiet: bool) -> tuple[dict[str, Any], int, int]:
    """Export ``ref`` from the local engine and push what the master lacks (signed with
    ``key`` when given): the master's record, the bytes sent, the image's size."""
    import tempfile
    from pathlib import Path

    from dockercomp.client import delivery, images

    client = images.connect()
    try:
        with tempfile.TemporaryDirectory(prefix="dockercomp-push-") as tmp:
            exported = delivery.export_image(client, ref, Path(tmp))
            record, sent = scientist.push_image(exported, progress=sys.stderr.isatty() and not quiet)
    finally:
        client.close()
    if key is not None:
        _sign(scientist, record["id"], key)
    return record, sent, sum(layer.size for layer in exported.layers)


def _signing_key(path: str) -> Any:
    from dockercomp.protocol import signing

    return signing.load_private(path)  # SigningError is bad input: exit 2


def _sign(scientist: Master, image_id: str, key: Any) -> None:
    from dockercomp.protocol import signing

    signed = signing.sign(key, image_id)
    scientist.add_signature(image_id, signed)
    print(f"signed {image_id} with key {signed.key}")


def cmd_sign(args: argparse.Namespace) -> int:
    from dockercomp.protocol import signing

    if args.action == "fingerprint":
        for key in signing.load_public(args.file):
            print(signing.fingerprint(key))
        return 0
    try:
        fp = signing.keygen(args.file, args.file + ".pub")
    except FileExistsError:
        raise UsageError(f"{args.file} exists already; a key is never overwritten") from None
    except OSError as exc:
        raise UsageError(f"cannot write {args.file}: {exc.strerror}") from None
    print(f"private key {args.file} (keep it off the master), public key {args.file}.pub")
    print(fp)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    status = _master(args).job(args.job).status()
    _print(args, status.to_json(), str(status))
    return 0


def cmd_control(args: argparse.Namespace) -> int:
    status = _master(args).job(args.job).control(args.command)
    _print(args, status.to_json(), str(status))
    return 0


def cmd_units(args: argparse.Namespace) -> int:
    units = _master(args).job(args.job).units(failed=args.failed)
    if args.json:
        print(json.dumps({"units": units}))
        return 0
    rows = []
    for u in units:
        wrong = [a for a in u["attempts"] if a["error"] or a["state"] in ("errored", "timed_out")]
        last = wrong[-1] if wrong else (u["attempts"][-1] if u["attempts"] else None)
        tail = ((last or {}).get("stderr_tail") or "").strip().splitlines()
        rows.append((
            str(u["index"]), u["kind"], u["state"], str(len(u["attempts"])),
            (last or {}).get("error") or "-", _or_dash((last or {}).get("exit_code")),
            (last or {}).get("client") or "-", tail[-1][:60] if tail else "",
        ))  # fmt: skip
    header = ("UNIT", "KIND", "STATE", "ATTEMPTS", "ERROR", "EXIT", "CLIENT", "STDERR (LAST LINE)")
    terminal.show(terminal.table(header, rows, styled=("STATE",)))
    if not rows:
        print(f"no {'failed ' * args.failed}unit in job {printable(args.job)}", file=sys.stderr)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    unit = _master(args).unit(args.job, args.unit)
    if args.json:
        print(json.dumps(unit))
        return 0
    print(printable(f"unit {unit['index']} of job {args.job} ({unit['kind']}): {unit['state']}, "
                    f"{len(unit['attempts'])} attempt(s)"))  # fmt: skip
    for a in unit["attempts"]:
        facts = [a["state"]] + [f"{name} {value}" for name, value in (
            ("error", a["error"]), ("exit code", a["exit_code"]), ("validity", a["validity"]),
            ("runtime", f"{a['runtime']:.1f} s" if a["runtime"] is not None else None),
            ("peak memory", terminal.size(a["peak_memory"]) if a["peak_memory"] else None),
        ) if value is not None]  # fmt: skip
        print()
        print(printable(f"attempt {a['id']} on client {a['client']}: " + ", ".join(facts)))
        tail = (a.get("stderr_tail") or "").rstrip()
        print(printable(tail, lines=True) if tail else "(nothing on stderr)")
    return 0


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)


def cmd_results(args: argparse.Namespace) -> int:
    chunks = _master(args).results(args.job, args.partial)
    first = next(chunks, b"")  # the request runs (and may fail) before anything is written
    try:
        out = sys.stdout.buffer if args.output == "-" else open(args.output, "wb")  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"cannot write {args.output}: {exc.strerror}") from None
    try:
        out.write(first)
        for chunk in chunks:
            out.write(chunk)
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    jobs = _master(args).jobs()
    rows = [
        (j["id"], j["name"], j["state"], str(j["units"]), j.get("owner", "-"), _when(j.get("created_at"))) for j in jobs
    ]
    _table(args, {"jobs": jobs}, ("JOB", "NAME", "STATE", "UNITS", "OWNER", "CREATED"), rows)
    return 0


def _when(timestamp: object) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(timestamp)) if isinstance(timestamp, int | float) else "-"


def cmd_clients(args: argparse.Namespace) -> int:
    clients = _master(args).clients()
    rows = [
        (c["id"], c["name"], "quarantined" if c.get("quarantined") else "online" if c["online"] else "offline",
         f"{c['busy']}/{c['slots']}", str(c["valid"]), str(c["errors"]), f"{c['reliability']:.2f}",
         "yes" if c.get("trusted") else "")
        for c in clients
    ]  # fmt: skip
    header = ("CLIENT", "NAME", "STATE", "BUSY", "VALID", "ERRORS", "RELIABILITY", "TRUSTED")
    _table(args, {"clients": clients}, header, rows)
    return 0


def _client_settings(args: argparse.Namespace) -> ClientSettings:
    return load_settings(ClientSettings, "client", args.config, flag_values(args, ClientSettings))


def cmd_client(args: argparse.Namespace) -> int:
    if args.client_action == "status":
        return cmd_client_status(args)
    if args.client_action in ("pause", "resume"):
        return cmd_client_pause(args)
    if args.client_action == "uninstall":
        return cmd_client_uninstall(args)
    _require("client")
    from dockercomp.client.daemon import Daemon
    from dockercomp.client.errors import ClientError

    settings = _client_settings(args)
    try:
        from dockercomp.client.service import ServiceRunner

        runner = ServiceRunner(
            root=os.path.join(settings.work_path, "service"),
            idle_timeout=settings.service_idle,
            max_containers=settings.slot_count,
        )
        daemon = Daemon(settings, runner)
    except (ClientError, OSError) as exc:
        print(f"dockercomp: cannot start the client: {exc}", file=sys.stderr)
        return 1
    daemon.handle_signals()
    return daemon.run()


def cmd_client_status(args: argparse.Namespace) -> int:
    from dockercomp.client import status

    work_dir = _client_settings(args).work_path
    data = status.read_status(work_dir)
    if data is None:
        print(f"dockercomp: no client daemon has run with the work directory {work_dir}", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=1) if args.json else status.render(data))
    return 0


def cmd_client_pause(args: argparse.Namespace) -> int:
    """``client pause|resume``: the control file in the daemon's work directory, which the
    daemon looks at every 0.2s (and keeps paused across restarts); then what it says it did."""
    from dockercomp.client import pause, status

    work_dir = _client_settings(args).work_path
    if not status.daemon_running(work_dir):
        raise UsageError(f"no client daemon uses the work directory {work_dir} (is it running? its --work-dir?)")
    pausing = args.client_action == "pause"
    try:
        changed = pause.request_pause(work_dir) if pausing else pause.request_resume(work_dir)
    except OSError as exc:
        print(f"dockercomp: cannot {args.client_action} the client in {work_dir}: {exc}", file=sys.stderr)
        return 1
    if not changed:
        print("the client was paused already" if pausing else "the client was not paused by `client pause`")

    def settled() -> dict[str, Any] | None:  # the daemon's status file agrees (and no container runs on)
        data = status.read_status(work_dir) or {}
        by_volunteer = any(str(why).startswith("by the volunteer") for why in data.get("paused") or ())
        running = pausing and any(a.get("phase") == "running" for a in data.get("running") or ())
        return data if by_volunteer == pausing and not running and data.get("state") not in (None, "stopped") else None

    deadline = time.monotonic() + 10.0
    while (data := settled()) is None and time.monotonic() < deadline and status.daemon_running(work_dir):
        time.sleep(0.1)
    if data is None:
        print(f"dockercomp: the daemon in {work_dir} has not confirmed yet; see `dockercomp client status`",
              file=sys.stderr)  # fmt: skip
        return 1
    paused = sum(1 for a in data.get("running") or () if a.get("phase") == "paused")
    if pausing:
        print(f"client {data.get('client', '')} paused: {paused} running unit(s) paused, nothing new is leased; "
              "`dockercomp client resume` to go on")  # fmt: skip
    elif data.get("paused"):
        print(f"client {data.get('client', '')} resumed by the volunteer, but still paused: "
              + "; ".join(str(why) for why in data["paused"]))  # fmt: skip
    else:
        running = len(data.get("running") or ())
        print(f"client {data.get('client', '')} resumed: {running} unit(s) running, leasing again")
    return 0


def cmd_client_uninstall(args: argparse.Namespace) -> int:
    """Run the install's own cleanup script (or the project's, for a partial install)."""
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    prefix = os.path.abspath(args.prefix or os.path.join(data, "dockercomp"))
    candidates = [os.path.join(prefix, "cleanup"), str(resources.script("cleanup"))]
    script = next((c for c in candidates if os.path.isfile(c)), None)
    if script is None:
        print(f"dockercomp: no cleanup script found (looked for {', '.join(candidates)})", file=sys.stderr)
        return 1
    argv = ["sh", script, "--prefix", prefix]
    argv += ["--purge-docker"] * args.purge_docker + ["--dry-run"] * args.dry_run
    os.chdir("/")
    os.execvp("sh", argv)


def cmd_workloads(args: argparse.Namespace) -> int:
    _require("client")
    from dockercomp.client import delivery, images, local_run

    if args.action == "run":
        return cmd_workloads_run(args)
    names = images.list_workloads()
    if args.action == "list":
        rows = [(name, images.workload_tag(name), local_run.description(name)) for name in names]
        print("\n".join("\t".join(row).rstrip("\t") for row in rows))
        return 0
    unknown = [n for n in args.names if n not in names]
    if unknown:
        raise UsageError(f"no workload named {', '.join(unknown)}; known: {', '.join(names) or 'none'}")
    if args.sign and not args.push:
        raise UsageError("--sign signs what --push pushes: give both")
    key = _signing_key(args.sign) if args.sign else None
    scientist = _master(args) if args.push else None
    try:
        docker_client = images.connect()
        for name in args.names or names:
            tag = images.build_workload(docker_client, name)
            print(tag)
            if scientist is not None:
                record, sent, _ = _push(scientist, tag, key, quiet=True)
                print(f"pushed {record['id']}: {sent} bytes sent")
    except (images.ImageError, delivery.DeliveryError) as exc:
        print(f"dockercomp: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_workloads_run(args: argparse.Namespace) -> int:
    from dockercomp.client import local_run

    env = {}
    for item in args.env:
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise UsageError(f"--env takes NAME=VALUE, got {item!r:.60}")
        env[key] = value
    if args.slots < 1:
        raise UsageError("--slots must be at least 1")
    to_stdout = args.output == "-"
    try:  # the result goes to a file beside the target, renamed into place once complete
        out = sys.stdout.buffer if to_stdout else open(args.output + ".partial", "wb")  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"cannot write {args.output}: {exc.strerror}") from None
    done = None
    try:
        done = local_run.run_workload(
            args.name, args.inputs, out, reduce=args.reduce, env=env, slots=args.slots, build=args.build
        )
    except local_run.UnitFailed as exc:
        tail = exc.outcome.stderr_tail.rstrip()
        print(f"dockercomp: {exc}" + (f"; the end of its stderr:\n{tail}" if tail else ""), file=sys.stderr)
        return 1
    except local_run.LocalRunError as exc:
        print(f"dockercomp: {exc}", file=sys.stderr)
        return 2 if exc.bad_input else 1
    except BrokenPipeError:  # `| head` read what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    finally:
        if not to_stdout:
            out.close()
            if done is None:
                os.unlink(out.name)
            else:
                os.replace(out.name, args.output)
    units = f"{done.maps} map unit{'s' * (done.maps != 1)}" + (" and a reduce" if done.reduced else "")
    where = "standard output" if to_stdout else args.output
    print(f"{done.workload}: {units} in {done.runtime:.1f}s; {done.output_size} bytes to {where}", file=sys.stderr)
    return 0


# -- output --------------------------------------------------------------------------------


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    """JSON (its strings escaped: no control character reaches the terminal) or ``text``,
    which holds what the master said: shown without its control characters."""
    print(json.dumps(data) if getattr(args, "json", False) else printable(text, lines=True))


def _table(args: argparse.Namespace, data: Any, header: tuple[str, ...], rows: Sequence[tuple[Any, ...]]) -> None:
    """``data`` as JSON with --json, else the rows as a table (a state coloured on a terminal)."""
    if args.json:
        print(json.dumps(data))
    else:
        terminal.show(terminal.table(header, rows, styled=("STATE",)))


if __name__ == "__main__":
    sys.exit(main())
