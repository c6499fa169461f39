"""Builds the jobd package, generating its protobuf and gRPC modules from proto/ at build time.

The protos are the repository's own `proto/` (two levels up from this file); an sdist carries
a copy of them in `proto/`, so a wheel built from the sdist generates the same modules.
`JOBD_PROTO_DIR` overrides both. The published gRPC service config (docs/service-config.json)
goes into the package the same way, as jobd/service_config.json.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent


def proto_dir() -> Path:
    candidates = [os.environ.get("JOBD_PROTO_DIR"), HERE / "proto", HERE.parent.parent / "proto"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "jobd" / "v1").is_dir():
            return Path(candidate)
    raise SystemExit(
        "jobd: cannot find the protos (proto/jobd/v1): install from the repository checkout "
        "(pip install ./clients/python) or set JOBD_PROTO_DIR"
    )


def service_config() -> Path:
    candidates = [HERE / "service-config.json", HERE.parent.parent / "docs" / "service-config.json"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise SystemExit("jobd: cannot find docs/service-config.json: install from the checkout")


def generate(out: Path) -> None:
    import grpc_tools
    from grpc_tools import protoc

    protos = proto_dir()
    include = Path(grpc_tools.__file__).parent / "_proto"
    files = sorted(str(p.relative_to(protos)) for p in (protos / "jobd" / "v1").glob("*.proto"))
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{protos}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"jobd: protoc failed on {files}")
    (out / "jobd" / "v1" / "__init__.py").write_text('"""Generated from proto/jobd/v1."""\n')
    shutil.copyfile(service_config(), out / "jobd" / "service_config.json")


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        super().run()
        generate(Path(self.build_lib))


class SdistWithProtos(sdist):
    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        target = Path(base_dir) / "proto" / "jobd"
        if not target.exists():
            shutil.copytree(proto_dir() / "jobd", target)
        shutil.copyfile(service_config(), Path(base_dir) / "service-config.json")


def dependencies() -> list[str]:
    from importlib.metadata import version

    def floor(name: str) -> str:
        return ".".join(version(name).split(".")[:2])

    protobuf = floor("protobuf")
    major = int(protobuf.split(".")[0])
    return [
        f"grpcio>={floor('grpcio-tools')}",
        f"protobuf>={protobuf},<{major + 1}",
        "googleapis-common-protos>=1.56",
        "opentelemetry-api>=1.20",
    ]


setup(
    cmdclass={"build_py": BuildPyWithProtos, "sdist": SdistWithProtos},
    install_requires=dependencies(),
)
