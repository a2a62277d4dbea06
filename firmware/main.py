# Edgewire device entry point: what boots on a board (copied to the board as
# main.py) and what runs on the MicroPython unix port in tests.
#
# It builds the platform's board, loads config.json from the board's storage,
# and runs a Device: one status line per connect, periodic stats when the
# config says "debug": true. A simulated reset (SimBoard) starts a new boot in
# the same process; on a real board machine.reset() reboots the chip.

import sys


def main(board=None, log=print):
    from edgewire.boards import ResetRequested, default_board
    if board is None:
        board = default_board()
    import edgewire
    from edgewire import wire
    if sys.implementation.name == "micropython":
        # A device only encodes, and decodes commands: the receiver-side validators
        # of the shared wire module are ~2.3 KB of heap it never calls.
        for name in ("decode_telemetry", "decode_telemetry_env", "decode_status", "decode_result",
                     "parse_topic", "topic_matches", "valid_filter", "encode_command"):
            if hasattr(wire, name):
                delattr(wire, name)
    # The long-lived code first, into an unfragmented heap; then the config
    # validator, which is only needed at boot and dropped again (its RAM comes back
    # as one block for buffers and queued readings).
    from edgewire.device import Device
    from edgewire import config
    try:
        cfg = config.load(board)
    except config.ConfigError as e:
        log("edgewire: bad configuration: %s" % e)
        raise
    del config
    sys.modules.pop("edgewire.config", None)
    try:
        delattr(edgewire, "config")
    except AttributeError:
        pass
    while True:
        dev = Device(board, cfg, log=log)
        try:
            dev.run()
            return dev
        except ResetRequested:
            log("edgewire: reset (new boot)")
        except KeyboardInterrupt:
            dev.stop()
            raise
        except Exception as e:  # a bug: say so, wait, start a new boot (a real board resets)
            log("edgewire: device crashed: %r; restarting in 5 s" % (e,))
            board.sleep_ms(5000)
            try:
                board.reset()
            except ResetRequested:
                pass


if __name__ == "__main__":
    main()
