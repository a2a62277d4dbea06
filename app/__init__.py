"""The `edgewire` console command and the demo: the one place that brings the
gateway and the simulator together.

The parts import each other only downwards, never in a circle:

    edgewire.app  ──►  edgewire.gateway  ──►  edgewire (device SDK, wire protocol)
          └──────────►  edgewire.sim      ──►  edgewire (device SDK, wire protocol)

The gateway never imports the simulator and the simulator never imports the
gateway: `edgewire sim` without `--broker` gets its embedded broker from here,
and so does `edgewire demo`. tests/test_layout.py checks it."""
