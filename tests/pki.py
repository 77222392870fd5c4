"""A CA and its certificates, made with openssl at run time, for tests of TLS."""

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA's certificate: what clients trust
    cert: Path  # for 127.0.0.1 and localhost
    key: Path
    wrong_cert: Path  # for wrong.example only
    wrong_key: Path


def openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"openssl {' '.join(args)}: {done.stderr}"


def issue(dir: Path, name: str, subject_alt_names: str) -> tuple[Path, Path]:
    """A server certificate signed by the CA in ``dir``, for the names given."""
    (dir / f"{name}.ext").write_text(
        f"subjectAltName={subject_alt_names}\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
    )
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=dir)  # fmt: skip
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext", cwd=dir)  # fmt: skip
    return dir / f"{name}.pem", dir / f"{name}.key"


def make_pki(dir: Path) -> Pki:
    """A CA in ``dir``, a certificate for 127.0.0.1 and localhost, and one for another name."""
    dir.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=dockercomp test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=dir)  # fmt: skip
    cert, key = issue(dir, "localhost", "IP:127.0.0.1,DNS:localhost")
    wrong_cert, wrong_key = issue(dir, "wrong", "DNS:wrong.example")
    return Pki(dir / "ca.pem", cert, key, wrong_cert, wrong_key)
