"""Regenerate sidecar/_proto from proto/ with a pinned code generator.

The generator is pinned to grpcio-tools 1.74.0 (bundling protobuf 6.31.1) because generated code refuses
to load on a protobuf runtime older than the generator's, and TensorFlow 2.21 allows protobuf >= 6.31.1.
It runs in a throwaway virtual environment so the project's own environment is never changed.
Usage: python scripts/gen_proto.py
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT = ROOT
GENERATOR = ["grpcio-tools==1.74.0", "protobuf==6.31.1"]


def sources() -> list[Path]:
    return sorted((PROTO_ROOT / "sidecar" / "_proto").glob("*.proto"))


def sources_digest() -> str:
    """Digest of the .proto sources; stored beside the generated code so a test can spot stale output."""
    digest = hashlib.sha256()
    for path in sources():
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env_dir = Path(tmp) / "venv"
        venv.create(env_dir, with_pip=True)
        python = env_dir / "bin" / "python"
        subprocess.run([python, "-m", "pip", "install", "-q", *GENERATOR], check=True)
        rel = [str(p.relative_to(PROTO_ROOT)) for p in sources()]
        subprocess.run(
            [python, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}", f"--python_out={OUT}", f"--pyi_out={OUT}", *rel],
            check=True,
        )
    package = ROOT / "sidecar" / "_proto"
    (package / "__init__.py").write_text('"""Generated protobuf code; regenerate with scripts/gen_proto.py."""\n')
    (package / "SOURCES.sha256").write_text(sources_digest() + "\n")
    print(f"generated {len(sources())} files into {package.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
