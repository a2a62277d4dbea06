"""The Edgewire gateway: an asyncio service that ingests device telemetry,
keeps the device registry, serves live streams and sends commands down."""
