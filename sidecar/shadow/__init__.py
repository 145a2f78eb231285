"""Shadow mirroring: copies of inference calls sent to a shadow model server, off the request path.

The `ShadowSender` is one more capture target of the proxies' tee: `append` samples a record and queues it (bounded,
drops counted); lanes on the event loop send the queued requests to each shadow (REST or gRPC, their own connection
pools) and hand each answer, paired with the primary's answer to the same request, to the analysis as a capture
record that names the shadow. The client's call never waits for any of it.
"""
