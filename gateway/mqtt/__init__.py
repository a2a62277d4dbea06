"""Our MQTT 3.1.1 client: sans-io packets (packets.py) under an asyncio client (client.py)."""
from edgewire.gateway.mqtt.client import Batch, Message, MqttClient, MqttStats, backoff_delay

__all__ = ["Batch", "Message", "MqttClient", "MqttStats", "backoff_delay"]
