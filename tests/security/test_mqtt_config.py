"""The [mqtt] TLS keys and [mqtt_auth], as `edgewire gateway --check` sees them."""
from __future__ import annotations

import pytest

from edgewire.gateway.config import parse_config
from edgewire.gateway.errors import ConfigError


def test_mqtts_url_turns_tls_on_with_its_default_port() -> None:
    m = parse_config('[mqtt]\nurl = "mqtts://gw.lan"\nca_file = "/etc/edgewire/tls/ca.pem"\n').mqtt
    assert m.tls and m.host_port == ("gw.lan", 8883)
    assert not parse_config('[mqtt]\nurl = "mqtt://gw.lan"\n').mqtt.tls
    assert parse_config('[mqtt]\nurl = "mqtt://gw.lan"\n').mqtt.host_port == ("gw.lan", 1883)


@pytest.mark.parametrize("toml, message", [
    ('[mqtt]\nurl = "mqtt://gw.lan"\nca_file = "ca.pem"\n', "[mqtt] ca_file 'ca.pem': TLS files need an mqtts:// url"),
    ('[mqtt]\nurl = "mqtts://gw.lan"\nkey_file = "k.pem"\n', "[mqtt] key_file 'k.pem': needs cert_file"),
    ('[mqtt]\nurl = "ws://gw.lan"\n', "scheme 'ws' is not supported"),
    ('[mqtt_auth]\ndir = "/var/lib/edgewire/mqtt-auth"\n', "[mqtt_auth] dir '/var/lib/edgewire/mqtt-auth': "
                                                            "per-device accounts need the gateway's own"),
    ('[mqtt_auth]\ndirectory = "x"\n', "[mqtt_auth] directory: unknown key (known: dir)"),
])
def test_bad_tls_and_auth_settings_are_named(toml: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(toml)
    assert message in str(e.value)


def test_missing_ca_file_is_named_at_start() -> None:
    from edgewire.gateway.certs import client_context

    m = parse_config('[mqtt]\nurl = "mqtts://gw.lan"\nca_file = "/nonexistent/ca.pem"\n').mqtt
    with pytest.raises(ConfigError, match=r"\[mqtt\] ca_file '/nonexistent/ca.pem': cannot be loaded"):
        client_context(m)
