"""Generate the gRPC code of protos/ into gateway/grpcapi/ (committed; a test
regenerates it and compares, so it never drifts from the .proto files).

    .venv/bin/python scripts/gen_protos.py          # rewrite gateway/grpcapi/*_pb2*.py
    .venv/bin/python scripts/gen_protos.py --out DIR

Needs grpcio-tools (the test extra); the gateway itself needs only grpcio and
protobuf (the `grpc` extra). protoc names modules after the .proto's path
(edgewire.v1.forward_pb2), which is not where they live in this package: the
generated imports are rewritten to edgewire.gateway.grpcapi."""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
OUT = ROOT / "gateway" / "grpcapi"


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "_gen"
    tmp.mkdir(exist_ok=True)
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    rc = protoc.main(["protoc", f"-I{PROTOS}", f"--python_out={tmp}", f"--pyi_out={tmp}",
                      f"--grpc_python_out={tmp}", *files])
    if rc != 0:
        raise SystemExit(f"protoc failed ({rc})")
    written = []
    for f in sorted(tmp.rglob("*.py*")):
        if f.suffix not in (".py", ".pyi"):
            continue
        text = f.read_text()
        text = re.sub(r"^from edgewire\.v1 import ", "from edgewire.gateway.grpcapi import ", text, flags=re.M)
        dest = out / f.name
        dest.write_text(text)
        written.append(dest)
    for f in sorted(tmp.rglob("*"), reverse=True):
        f.unlink() if f.is_file() else f.rmdir()
    tmp.rmdir()
    return written


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    for p in generate(args.out):
        print(p)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
