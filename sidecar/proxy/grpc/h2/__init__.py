"""The HTTP/2 relay engine: frames, HPACK, endpoints, calls, and the asyncio transport around them."""
