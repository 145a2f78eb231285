"""The grpc.aio engine: a generic handler forwarding raw bytes."""
