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
    # The config validator first: it is only needed at boot, and dropping it
    # before the long-lived code loads keeps the boot peak at the running size
    # instead of running size + validator (~7 KB).
    import edgewire
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
    from edgewire.device import Device
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
            if hasattr(sys, "print_exception"):
                sys.print_exception(e)  # MicroPython: where it happened, on the console
            board.sleep_ms(5000)
            try:
                board.reset()
            except ResetRequested:
                pass


if __name__ == "__main__":
    main()
