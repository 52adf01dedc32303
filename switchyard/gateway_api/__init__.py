"""The HTTP/WebSocket edge."""
