"""Ingest adapters: each turns one transport's input into calls on the Core.
One module per transport, imported only when enabled; none imports another."""
