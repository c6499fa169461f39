"""Certificates for TLS tests, made with the openssl command in a directory of the test's own."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


class Pki:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="jobd-py-pki-"))

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def path(self, name: str) -> str:
        return str(self.dir / name)

    def authority(self, name: str) -> None:
        self._openssl(
            "req", "-x509", *EC_KEY, "-keyout", f"{name}.key", "-out", f"{name}.crt",
            "-days", "1", "-subj", f"/CN=jobd test CA {name}",
        )  # fmt: skip

    def issue(self, ca: str, name: str, sans: str) -> None:
        (self.dir / f"{name}.ext").write_text(
            f"subjectAltName={sans}\nextendedKeyUsage=serverAuth,clientAuth\n"
        )
        self._openssl(
            "req", *EC_KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}"
        )
        self._openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "1", "-extfile", f"{name}.ext",
        )  # fmt: skip

    def _openssl(self, *args: str) -> None:
        subprocess.run(["openssl", *args], cwd=self.dir, check=True, capture_output=True)
