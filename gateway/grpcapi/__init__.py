"""Code generated from protos/ by scripts/gen_protos.py (do not edit the
*_pb2*.py files; change the .proto and regenerate: a test checks that they
match). Needs the `grpc` extra: pip install 'edgewire[grpc]'."""
