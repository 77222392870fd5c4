"""What a volunteer checks before a grant may run, and the image it fetches for it.

The master is not trusted blindly. Before anything of a grant is downloaded or started:
- it must fit what this volunteer donated (cpus: its slots; memory) and its longest timeout
  (the container is then limited to the grant's cpus and memory, never more: docker_runner;
  a multi-container unit needs that much for each of its containers);
- its image must be named by id (``sha256:...``), never by tag, and signed by a key this
  volunteer trusts (unless it allows unsigned images, in a lab), and its tags must match
  ``allow_images`` when that is set; so must every image of a multi-container unit, each
  checked before any of them is fetched;
- an image the engine lacks is fetched from the master itself: its config and only the
  layers the engine lacks, piece by piece (each verified by its xxh3), every layer then
  checked against its sha256, the loaded image against its id;
- the images fetched so stay within ``image_budget``: the bytes downloaded for those the
  engine still holds (kept in ``WORK_DIR/images/fetched.json``) plus the new one's; an image
  that would pass it is refused before a byte of it is downloaded (the volunteer frees room
  with ``docker image rm`` or ``cleanup``; nothing is removed behind their back). A master
  cannot lie its way past it: no piece is taken past its size, no layer past its own.
A refusal is an outcome (``refused``, ``untrusted``, ``integrity``, ...) reported to the
master like any failure; nothing is run.
"""

import fnmatch
import json
import logging
import os
import shutil
import tempfile
import threading
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import docker.errors

from dockercomp.protocol.errors import IntegrityError, ProtocolError
from dockercomp.protocol.images import PIECE_SIZE, PINNED_RE, ImageInfo
from dockercomp.protocol.integrity import verify
from dockercomp.protocol.limits import STDERR_TAIL
from dockercomp.protocol.messages import ErrorKind, Grant
from dockercomp.protocol.quantities import format_size
from dockercomp.protocol.signing import IMAGE_ID_RE, Signed, SigningError, trust, trusted_signer

from . import delivery
from .errors import Cancelled, ClientError, MasterError
from .master import MasterSession
from .runner import RunOutcome
from .settings import ClientSettings

log = logging.getLogger(__name__)


class _OverBudget(ClientError):
    """An image would take this volunteer past its image budget."""


class Provisioner:
    """One per daemon, shared by its worker threads. ``engine`` is the Docker client the
    containers run on (None for a runner without Docker: images are then not fetched)."""

    def __init__(
        self, settings: ClientSettings, master: MasterSession, engine: Any, work_dir: str, slots: int, memory: int
    ) -> None:
        self.settings = settings
        self.master = master
        self.engine = engine
        self.work_dir = work_dir
        self.cpus, self.memory, self.gpus = float(slots), memory, settings.gpu_count
        self.max_timeout = settings.max_timeout
        self.patterns = settings.image_patterns
        try:
            self.trusted = trust(settings.trust_files)
        except SigningError as exc:
            raise ClientError(str(exc)) from None
        if not self.trusted and not settings.allow_unsigned:
            raise ClientError(
                "no key to trust: give the public key of the project whose images this machine runs "
                "(--trust KEYFILE; the installer pins it), or --allow-unsigned for a lab"
            )
        self.received = 0  # image bytes downloaded from the master
        self.budget = settings.image_budget
        self._ledger = Path(work_dir) / "images" / "fetched.json"  # image id -> bytes downloaded for it
        self._reserved = 0  # bytes of fetches under way
        self._budget_lock = threading.Lock()
        self._checked: dict[str, ImageInfo] = {}  # image ids whose signature held
        self._locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._lock = threading.Lock()

    def prepare(self, grant: Grant, cancel: threading.Event) -> RunOutcome | None:
        """None when the grant may run here (its images present, trusted, allowed), else the
        outcome to report instead of running it. A multi-container grant's every image is
        checked before any is fetched; a refusal of a sidecar's names it."""
        problem = self._limits(grant)
        if problem:
            return RunOutcome(ErrorKind.REFUSED, stderr_tail=problem)
        images = [("", grant.image), *((s.name, s.image) for s in grant.sidecars)]
        for fetch in (False, True):
            for name, image in images:
                outcome = self._image(image, cancel, fetch)
                if outcome is not None:
                    return replace(outcome, stderr_tail=f"container {name}: {outcome.stderr_tail}") if name else outcome
        return None

    def _image(self, image: str, cancel: threading.Event, fetch: bool) -> RunOutcome | None:
        """None when ``image`` may run here (and, with ``fetch``, is in the engine), else the
        outcome to report."""
        if PINNED_RE.fullmatch(image):
            return self._registry(image, pull=fetch)
        if not IMAGE_ID_RE.fullmatch(image):
            return RunOutcome(ErrorKind.REFUSED, stderr_tail=f"image {image!r:.80} is not an image id; run by id only")
        with self._lock:
            lock = self._locks[image]
        with lock:  # two slots granted one image fetch it once
            try:
                info = self._trusted(image, cancel)
                problem = self._allowed(info)
                if problem:
                    return RunOutcome(ErrorKind.REFUSED, stderr_tail=problem)
                if fetch and self.engine is not None:
                    self._fetch(info, cancel)
            except _OverBudget as exc:
                log.warning("image %s refused: %s", image, exc)
                return RunOutcome(ErrorKind.REFUSED, stderr_tail=str(exc))
            except SigningError as exc:
                log.error("image %s refused: %s", image, exc)
                return RunOutcome(ErrorKind.UNTRUSTED, stderr_tail=str(exc))
            except (IntegrityError, ProtocolError) as exc:
                log.error("image %s failed its check: %s", image, exc)
                return RunOutcome(ErrorKind.INTEGRITY, stderr_tail=str(exc))
            except delivery.DeliveryError as exc:
                log.error("image %s not loaded: %s", image, exc)
                kind = ErrorKind.INTEGRITY if exc.kind == "integrity" else ErrorKind.IMAGE_MISSING
                return RunOutcome(kind, stderr_tail=str(exc))
            except (Cancelled, MasterError) as exc:
                if cancel.is_set():
                    return RunOutcome(ErrorKind.ABORTED)
                return RunOutcome(ErrorKind.IMAGE_MISSING, stderr_tail=f"image {image} not fetched: {exc}")
            except (OSError, docker.errors.DockerException) as exc:  # this host's disk, or its engine gone
                log.error("image %s not fetched: %s", image, exc)
                return RunOutcome(ErrorKind.CLIENT, stderr_tail=f"image {image} not fetched: {exc}"[:STDERR_TAIL])
        return None

    # -- the volunteer's own rules -------------------------------------------------------------
    def _limits(self, grant: Grant) -> str:
        each = f" for its {1 + len(grant.sidecars)} containers" if grant.sidecars else ""
        if grant.unit_cpus > self.cpus + 1e-9:
            return f"the unit asks {grant.unit_cpus:g} cpus{each}; this volunteer donated {self.cpus:g}"
        if grant.unit_memory > self.memory:
            asked, donated = format_size(grant.unit_memory), format_size(self.memory)
            return f"the unit asks {asked} of memory{each}; this volunteer donated {donated}"
        if grant.gpus > self.gpus:
            return f"the unit asks {grant.gpus} GPUs; this volunteer donated {self.gpus}"
        if grant.timeout > self.max_timeout:
            return f"the unit may run {grant.timeout:g}s; this volunteer allows at most {self.max_timeout:g}s"
        return ""

    def _allowed(self, info: ImageInfo) -> str:
        if not self.patterns or any(fnmatch.fnmatchcase(t, p) for t in info.tags for p in self.patterns):
            return ""
        return f"image {info.id} ({', '.join(info.tags) or 'no tag'}) matches none of allow_images"

    def _registry(self, ref: str, pull: bool = True) -> RunOutcome | None:
        """A job may name ``name@sha256:...`` from a registry: pulled by digest only, and only by a
        volunteer that allows registries. No signature can vouch for it through the master."""
        if not self.settings.allow_registries:
            why = f"{ref:.120}: this volunteer does not pull from registries"
            return RunOutcome(ErrorKind.REFUSED, stderr_tail=why)
        if not self.settings.allow_unsigned:
            return RunOutcome(ErrorKind.UNTRUSTED, stderr_tail=f"{ref:.120} comes from a registry, unsigned")
        if self.patterns and not any(fnmatch.fnmatchcase(ref, p) for p in self.patterns):
            return RunOutcome(ErrorKind.REFUSED, stderr_tail=f"{ref:.120} matches none of allow_images")
        if pull and self.engine is not None:
            try:
                self.engine.images.pull(ref)
            except Exception as exc:  # the SDK's errors, and the network's
                why = f"pulling {ref:.120} failed: {exc}"
                return RunOutcome(ErrorKind.IMAGE_MISSING, stderr_tail=why[:STDERR_TAIL])
        return None

    # -- the image ---------------------------------------------------------------------------
    def _trusted(self, image_id: str, cancel: threading.Event) -> ImageInfo:
        """The master's record of the image, once a trusted key's signature of its id held."""
        info = self._checked.get(image_id)
        if info is not None:
            return info
        info = self.master.get(f"/images/{image_id}", ImageInfo, until=cancel)
        if info.id != image_id:
            raise IntegrityError(image_id, info.id, "image record")
        if not self.settings.allow_unsigned:
            signatures = [Signed(s.key, s.public_key, s.signature) for s in info.signatures]
            signer = trusted_signer(signatures, image_id, self.trusted)
            log.info("image %s is signed by trusted key %s", image_id, signer[:16])
        self._checked[image_id] = info
        return info

    def _fetch(self, info: ImageInfo, cancel: threading.Event) -> None:
        """Load the image into the engine unless it is there: config and missing layers only."""
        try:
            self.engine.images.get(info.id)
            return
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.DockerException as exc:
            raise delivery.DeliveryError("docker", f"cannot inspect image {info.id}: {exc}") from exc
        root = Path(self.work_dir) / "images"
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        missing = delivery.missing_layers(self.engine, [layer.digest for layer in info.layers])
        got = sum(info.layers[i].size for i in missing) + info.config_size
        self._reserve(info.id, got)
        tmp = Path(tempfile.mkdtemp(prefix="load-", dir=root))
        try:
            config = self._blob(info.config, info.config_size, tmp / "config", cancel)
            files = {}
            for i in missing:
                layer = info.layers[i]
                files[i] = self._layer(layer.pieces, layer.size, tmp / f"layer-{i}", cancel)
            delivery.load_image(self.engine, info.id, config.read_bytes(), files, tmp)
            self._record(info.id, got)
            log.info("image %s loaded: %d of %d layers downloaded (%d bytes)", info.id, len(missing), len(info.layers),
                     got)  # fmt: skip
        finally:
            with self._budget_lock:
                self._reserved -= got
            shutil.rmtree(tmp, ignore_errors=True)

    # -- the image budget ----------------------------------------------------------------------
    def _reserve(self, image_id: str, size: int) -> None:
        """Take ``size`` bytes of the budget for a fetch, or _OverBudget saying why not."""
        with self._budget_lock:
            held = self._held() + self._reserved
            if held + size > self.budget:
                raise _OverBudget(
                    f"image {image_id} needs {format_size(size)} downloaded; images fetched from the master take "
                    f"{format_size(held)} of this volunteer's image budget of {format_size(self.budget)} "
                    "(image_budget; free room with docker image rm)"
                )
            self._reserved += size

    def _held(self) -> int:
        """Bytes downloaded for the images of the ledger the engine still holds (called under
        the budget lock); those it no longer holds leave the ledger. An engine that does not
        answer keeps them all counted."""
        ledger = self._read_ledger()
        kept: dict[str, int] = {}
        for image_id, size in ledger.items():
            try:
                self.engine.images.get(image_id)
            except docker.errors.ImageNotFound:
                continue
            except docker.errors.DockerException:
                pass
            kept[image_id] = size
        if kept != ledger:
            self._write_ledger(kept)
        return sum(kept.values())

    def _record(self, image_id: str, size: int) -> None:
        with self._budget_lock:
            self._write_ledger(self._read_ledger() | {image_id: size})

    def _read_ledger(self) -> dict[str, int]:
        try:
            data = json.loads(self._ledger.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring the unreadable image ledger %s: %s", self._ledger, exc)
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): v for k, v in data.items() if isinstance(v, int) and not isinstance(v, bool) and v >= 0}

    def _write_ledger(self, ledger: dict[str, int]) -> None:
        tmp = self._ledger.with_suffix(".tmp")
        tmp.write_text(json.dumps(ledger), encoding="utf-8")
        os.replace(tmp, self._ledger)

    def _layer(self, pieces: list[str], size: int, path: Path, cancel: threading.Event) -> Path:
        with open(path, "wb") as out:
            for i, piece in enumerate(pieces):
                part = self._blob(piece, None, path.with_suffix(f".{i}"), cancel)
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
                os.unlink(part)
                if out.tell() > size:  # no more than the layer's announced size is ever taken
                    raise IntegrityError(str(size), f"more than {size} bytes", "layer length")
        if path.stat().st_size != size:
            raise IntegrityError(str(size), str(path.stat().st_size), "layer length")
        return path

    def _blob(self, blob: str, size: int | None, path: Path, cancel: threading.Event) -> Path:
        """Download one blob to ``path`` (resumed by Range when cut off), verified by its xxh3."""
        with open(path, "w+b") as f:  # no piece is larger than PIECE_SIZE, no blob than its size
            self.master.download(blob, f, cancel=cancel, limit=PIECE_SIZE if size is None else size)
            f.seek(0)
            data = f.read()
        with self._lock:
            self.received += len(data)
        verify(data, blob, "image blob from the master")
        if size is not None and len(data) != size:
            raise IntegrityError(str(size), str(len(data)), "image blob length")
        return path
