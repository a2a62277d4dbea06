"""HTTP adapters: REST API, SSE and WebSocket push, and the dashboard (aiohttp)."""
