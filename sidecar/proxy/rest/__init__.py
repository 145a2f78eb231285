"""The REST (HTTP/1.1) proxy: client connections, the upstream pool, routes and local routes."""
