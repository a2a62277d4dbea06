# Optional wall time from an NTP server, for sites whose gateway does not send
# the time (the gateway's `time` command is the normal source). Loaded only
# when the board has an ntp_host (McuBoard(ntp_host=...)); McuBoard.feed() calls sync() when it is due:
# at once after the Wi-Fi is up, then every hour, and 30 s after a failure.
# One query blocks for at most ntptime.timeout (1 s) plus the lookup of the
# host (use an IP address to avoid DNS).

_RESYNC_MS = 3600000
_RETRY_MS = 30000


def sync(board, state):
    """state: [host, next sync ms], updated here. True when the clock was set."""
    import ntptime
    ntptime.host = state[0]
    ntptime.timeout = 1
    try:
        t = ntptime.time()  # seconds since the port's epoch (1970, or 2000 on old ports)
    except (OSError, OverflowError, IndexError, ValueError):
        state[1] = board.ticks_ms() + _RETRY_MS
        return False
    board.set_time_ms((t + board._epoch_fix) * 1000)
    state[1] = board.ticks_ms() + _RESYNC_MS
    return True
