"""Image signatures (BOINC's code signing, with Ed25519).

The project keeps a private key off the master and signs each workload image's id with it;
the id is the sha256 of the image's config, which names every layer by its digest, so one
signature pins every byte a volunteer will run. Volunteers trust public keys (the installer
pins the project's by fingerprint) and run nothing a trusted key did not sign: a master that
is broken into can hand out other images, but not signatures for them.

Keys are PEM files (PKCS#8 private, SubjectPublicKeyInfo public); a fingerprint is the
sha256 of the raw 32-byte public key, in hex.
"""

import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import ProtocolError

CONTEXT = b"dockercomp image signature v1\n"  # what is signed: this, then the image id
IMAGE_ID_RE = re.compile(r"sha256:[0-9a-f]{64}")
FINGERPRINT_RE = re.compile(r"[0-9a-f]{64}")
_PEM_PUBLIC = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.S)


class SigningError(ProtocolError):
    """A key that cannot be read, or a signature that does not hold; the message says which."""


@dataclass(frozen=True)
class Signed:
    """One signature of an image id, as the master keeps and hands it out."""

    key: str  # the signer's fingerprint
    public_key: str  # raw public key, hex
    signature: str  # hex


def keygen(private_path: str, public_path: str) -> str:
    """Write a new key pair (the private file readable by its owner only); return the fingerprint."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public = private.public_key()
    with open(public_path, "wb") as f:
        f.write(public_pem(public))
    return fingerprint(public)


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(raw(key)).hexdigest()


def load_private(path: str) -> Ed25519PrivateKey:
    try:
        with open(path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except OSError as exc:
        raise SigningError(f"cannot read the private key {path}: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise SigningError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path} is not an Ed25519 key; make one with dockercomp sign keygen")
    return key


def load_public(path: str) -> list[Ed25519PublicKey]:
    """Every public key in a PEM file (a trust file may hold several)."""
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError as exc:
        raise SigningError(f"cannot read the public key file {path}: {exc.strerror}") from None
    keys = []
    for block in _PEM_PUBLIC.findall(data):
        try:
            key = serialization.load_pem_public_key(block)
        except ValueError as exc:
            raise SigningError(f"{path} holds a public key that cannot be read: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise SigningError(f"{path} holds a public key that is not Ed25519")
        keys.append(key)
    if not keys:
        raise SigningError(f"{path} holds no PEM public key")
    return keys


def public_from_hex(value: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(value))
    except ValueError:
        raise SigningError("public_key must be 64 hex digits, a raw Ed25519 public key") from None


def check_image_id(value: object, what: str = "image id") -> str:
    if not isinstance(value, str) or not IMAGE_ID_RE.fullmatch(value):
        raise ProtocolError(f"{what} must be sha256: and 64 lowercase hex digits, got {value!r:.80}")
    return value


def sign(key: Ed25519PrivateKey, image_id: str) -> Signed:
    public = key.public_key()
    signature = key.sign(CONTEXT + check_image_id(image_id).encode())
    return Signed(fingerprint(public), raw(public).hex(), signature.hex())


def check(signed: Signed, image_id: str) -> None:
    """That a signature is well formed and holds for this image id under its own public key."""
    public = public_from_hex(signed.public_key)
    if fingerprint(public) != signed.key:
        raise SigningError("the signature's key fingerprint does not match its public key")
    try:
        public.verify(bytes.fromhex(signed.signature), CONTEXT + check_image_id(image_id).encode())
    except (InvalidSignature, ValueError):
        raise SigningError(f"the signature by {signed.key[:16]} does not hold for image {image_id}") from None


def trusted_signer(signatures: Iterable[Signed], image_id: str, trusted: Mapping[str, Ed25519PublicKey]) -> str:
    """The fingerprint of a trusted key whose signature of ``image_id`` holds, checked with
    the trusted key itself (never the key a signature carries); SigningError when none does."""
    seen = []
    for signed in signatures:
        key = trusted.get(signed.key)
        seen.append(signed.key[:16])
        if key is None:
            continue
        try:
            key.verify(bytes.fromhex(signed.signature), CONTEXT + image_id.encode())
        except (InvalidSignature, ValueError):
            continue
        return signed.key
    if not seen:
        raise SigningError(f"image {image_id} is not signed; this volunteer runs only signed images")
    raise SigningError(f"image {image_id} is signed only by keys this volunteer does not trust ({', '.join(seen)})")


def trust(paths: Iterable[str]) -> dict[str, Ed25519PublicKey]:
    """The trusted keys from these PEM files, by fingerprint."""
    return {fingerprint(key): key for path in paths for key in load_public(path)}
