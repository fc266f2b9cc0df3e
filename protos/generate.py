"""Regenerate the committed gRPC stubs: `python -m protos.generate [OUT_DIR]`.

Runs grpc_tools.protoc in-process with the repository root as the include path,
so generated code imports `from protos import tensors_pb2`; that becomes `from fedtl.protos import
tensors_pb2`, the name the package has once installed (and in a checkout, through fedtl/__init__.py). The stubs are
committed (a fresh clone imports with no build step); tests/test_protos_fresh.py
regenerates into a temporary folder and fails when the committed ones differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The generator the committed stubs were made with. Gencode is tied to its
# generator version, so the freshness test insists on this exact release.
GRPCIO_TOOLS_VERSION = "1.85.1"

PROTO_DIR = Path(__file__).resolve().parent
ROOT = PROTO_DIR.parent
PROTO_FILES = ("tensors.proto", "federation.proto")


def generate(out_dir: Path) -> list[Path]:
    """Write *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every proto into out_dir/protos."""
    import grpc_tools
    from grpc_tools import protoc  # dev-only dependency, imported on use

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "protos").mkdir(exist_ok=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(PROTO_DIR / name) for name in PROTO_FILES],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    paths = sorted((out_dir / "protos").glob("*_pb2*.py*"))
    for path in paths:  # installed, the stubs live in fedtl.protos (pyproject's package-dir): import them by that name
        text = path.read_text()
        path.write_text(text.replace("from protos import ", "from fedtl.protos import ").replace("DESCRIPTOR, 'protos.", "DESCRIPTOR, 'fedtl.protos."))
    return paths


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else ROOT
    for path in generate(out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
