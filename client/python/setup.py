"""Builds the rmgen package; the gRPC stubs are generated from the repository's proto/ at
build time (grpc_tools when installed, else `protoc` with `grpc_python_plugin`, both in
Debian's protobuf-compiler-grpc). RMGEN_PROTO_DIR names another proto root."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
PROTO = "rmgen/v1/rmgen.proto"


def proto_root() -> Path:
    root = Path(os.environ.get("RMGEN_PROTO_DIR", HERE.parent.parent / "proto"))
    if not (root / PROTO).is_file():
        sys.exit(f"setup.py: {root / PROTO} not found: build from the rmgen repository, "
                 "or set RMGEN_PROTO_DIR to a folder holding rmgen/v1/rmgen.proto")
    return root


def generate(out: Path) -> None:
    """Writes rmgen/v1/rmgen_pb2.py and rmgen_pb2_grpc.py under `out`."""
    root = proto_root()
    out.mkdir(parents=True, exist_ok=True)
    try:
        from grpc_tools import protoc  # type: ignore

        import pkg_resources  # the well-known types ship inside grpc_tools

        include = pkg_resources.resource_filename("grpc_tools", "_proto")
        rc = protoc.main(["protoc", f"-I{root}", f"-I{include}", f"--python_out={out}",
                          f"--grpc_python_out={out}", str(root / PROTO)])
    except ImportError:
        protoc_bin, plugin = shutil.which("protoc"), shutil.which("grpc_python_plugin")
        if not protoc_bin or not plugin:
            sys.exit("setup.py: generating the gRPC stubs needs grpcio-tools, or protoc and "
                     "grpc_python_plugin (Debian: protobuf-compiler-grpc)")
        rc = subprocess.call([protoc_bin, f"-I{root}", f"--python_out={out}",
                              f"--grpc_out={out}", f"--plugin=protoc-gen-grpc={plugin}",
                              str(root / PROTO)])
    if rc != 0:
        sys.exit(f"setup.py: protoc failed on {root / PROTO} (exit {rc})")


class BuildPyWithStubs(build_py):
    def run(self):
        super().run()
        generate(Path(self.build_lib))


setup(cmdclass={"build_py": BuildPyWithStubs})
