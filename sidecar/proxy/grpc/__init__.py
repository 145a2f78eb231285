"""What both gRPC engines share: methods, metadata, the exchange record, model peeking; the engine choice."""
