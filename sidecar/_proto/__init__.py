"""Generated protobuf code; regenerate with scripts/gen_proto.py."""
