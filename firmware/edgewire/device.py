# The Edgewire device: sample streams, publish telemetry, answer commands, and
# keep going through Wi-Fi drops, broker restarts and bad packets.
#
#   dev = Device(board, config)   # opens nothing
#   dev.run()                     # until dev.stop() (from another thread) or a reset
#   # or drive it yourself: while ...: dev.step()
#
# Delivery: each telemetry message carries (device, boot, seq). QoS 1/2 messages
# stay in the MQTT client's in-flight window until acknowledged and are resent
# after a reconnect; readings taken while offline wait in a bounded RAM queue
# (drop-oldest, counted in stats["dropped"]) and go out after reconnecting with
# their own uptime stamps. The gateway removes duplicates by (device, boot, seq).
#
# All time goes through the board; a Device keeps all its state on itself, so a
# simulator can run hundreds of them in CPython threads.
#
# RAM (MicroPython, 64-bit unix port): a Device is ~1.5 KB, plus a queue
# preallocated at start (17 B per slot of queue_size, default 64) and 16 B per
# queued float reading, plus the MQTT window (max_inflight messages of up to
# batch_max readings each).

import gc
from array import array

gc.collect()  # before the rest loads: the boot just dropped the config validator (fragments)

from edgewire import __version__, wire
from edgewire.boards import SensorError
from edgewire.mqtt import REFUSED, MQTTClient, MQTTError

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

_STEP_MS = const(200)     # longest wait in one step(): bounds stop() latency
_CMD_PENDING = const(8)   # commands received but not yet executed
_IDX = const(0x3F)        # queue slot flags: the stream index, ...
_FLT = const(0x40)        # ... this bit when the value is a float (in _qf), ...
_ERR = const(0x80)        # ... this bit when the value is an error text
_MP = hasattr(gc, "mem_free")  # MicroPython: collect each step to keep the heap unfragmented

# Books: readings == sent_readings + dropped + queued, at every step and after stop.
# RARE_KEYS appear in stats once non-zero: every key costs heap in each stats result.
RARE_KEYS = ("oversized", "sub_refused", "q2_dropped")
STAT_KEYS = ("readings", "faults", "sent_q0", "sent_q1", "sent_q2", "acked_q0", "acked_q1",
             "acked_q2", "sent_readings", "lost_q0", "queued", "dropped", "connects", "reconnects",
             "conn_failures", "commands", "bad_commands", "cmd_dropped", "lost_oom", "oom")
_SENT = ("sent_q0", "sent_q1", "sent_q2")
_ACKED = ("acked_q0", "acked_q1", "acked_q2")


_cmd_wait = 0  # MicroPython: until when waiting commands let the window drain (a module
# global, not an attribute: one more attribute resizes every Device's dict)


class Device:
    def __init__(self, board, config, log=None):
        """board: see edgewire.boards; config: from edgewire.config.load/build.
        log: a function taking one string (print), or None for silence."""
        self.board = board
        self.cfg = config
        self._log = log
        board.configure(config)
        self.device_id = config["device_id"]
        d = self.device_id
        self.topics = {k: wire.topic(d, k) for k in wire.KINDS}
        self.boot = 0
        self.conn = 0
        self.seq = 0
        self.stats = {}
        for k in STAT_KEYS:
            self.stats[k] = 0
        # per stream: [name, source, interval_ms, qos, unit, next_due_ms]
        self.streams = [[s["name"], s["source"], s["interval_ms"], s.get("qos", 1), s.get("unit", ""), 0]
                        for s in config["streams"]]
        # Readings to send, oldest first: a ring of queue_size slots preallocated
        # here, so a queued reading holds no heap object of its own (a float
        # sits in _qf) and the queue cannot fragment the heap. Slot j: flags
        # in _qs[j] (stream index | _FLT | _ERR), a float value in _qf[j], any
        # other value or the error text in _qv[j], the uptime in ms in _qt[j].
        n = config["queue_size"]
        self._qs = bytearray(n)
        self._qf = array("d", bytes(8 * n))
        self._qv = [None] * n
        self._qt = [0] * n
        self._qh = 0        # slot of the oldest reading
        self._qn = 0        # readings queued
        self._cmds = []     # command payloads received, not yet executed
        self._cache = []    # [(command id, result payload)], newest last
        self._tel = {}      # in-flight telemetry packet id -> qos
        self._client = None
        self._stopping = False
        self._reboot = 0
        self._next_try = 0  # offline: the next connect attempt; online: no telemetry before (after an OOM)
        self._attempt = 0
        self._up_since = -1
        self._next_stats = 0
        self._birth_pid = 0
        self._sub_at = 0    # when to retry a refused command subscription (0: none due)
        self._batch = config["batch_max"]  # readings per message now: halved after running out of heap
        # At most 29 attributes: the instance table then stays one 464 B block.

    # ------------------------------------------------------------ lifecycle

    def run(self):
        """Sample, publish and reconnect until stop(), also one that came before
        run() started. A board reset propagates."""
        try:
            while not self._stopping:
                try:
                    self.step()
                except MemoryError:
                    # The heap ran out mid-step (a burst, fragmentation). Queued
                    # readings and the QoS 1/2 window stay; the connection goes,
                    # since a packet may be half read or written.
                    self._drop_cmds()
                    if self.connected:
                        self._lost("out of memory")
            cl = self._client  # goodbye: flush, death "shutdown", DISCONNECT
            if cl is not None and cl.connected:
                try:
                    self._flush()
                    cl.publish(self.topics["status"], wire.encode_death(self.device_id, self.boot, self.conn,
                                                                        "shutdown"), 1, True)
                    end = self.board.ticks_ms() + self.cfg["timeout_ms"]
                    while len(cl.window) and self.board.ticks_ms() < end:
                        cl.poll(50)
                    cl.disconnect()
                except (MQTTError, MemoryError):
                    cl.close()
        finally:
            if self._client is not None:
                self._client.close()

    def stop(self):
        """Ask run() to finish (now, or as soon as it starts): it publishes death
        ("shutdown") and DISCONNECTs. Safe from another thread."""
        self._stopping = True

    def _drop_cmds(self):
        """Out of heap: count it, drop the oldest pending command (counted; none may
        fail forever, the sender's timeout answers; the others get their turn) and
        any half-imported module; smaller telemetry batches leave more room."""
        self.stats["oom"] += 1
        if self._cmds:
            self._cmds.pop(0)
            self.stats["cmd_dropped"] += 1
        self._batch = max(1, self._batch // 2)
        if _MP:
            _unload("commands")
            _unload("toobig")
            _unload("unpack")
        gc.collect()

    @property
    def connected(self):
        return self._client is not None and self._client.connected

    def _begin(self):
        c = self.cfg
        while not self.boot:
            self.boot = self.board.random_u32()
        self._client = MQTTClient(c["client_id"] or self.device_id, keepalive=c["keepalive_s"],
                                  clean_session=c["clean_session"], user=c["username"],
                                  password=c["password"], timeout_ms=c["timeout_ms"],
                                  retry_ms=c["retry_ms"], max_inflight=c["max_inflight"],
                                  max_packet=c["max_packet"], clock=self.board.ticks_ms)
        self._client.on_message = self._on_message
        self._client.on_ack = self._on_ack
        self._client.on_wait = self._on_wait
        now = self.board.ticks_ms()
        for s in self.streams:
            s[5] = now
        self._next_stats = now + c["stats_ms"]

    def step(self):
        """One round: sample what is due, (re)connect when due, send, handle
        inbound packets and commands, then wait at most ~200 ms."""
        b = self.board
        b.feed()
        if self._client is None:  # also after a MemoryError inside _begin
            self._begin()
        now = b.ticks_ms()
        self._sample(now)
        if self.connected and self._sub_at and now >= self._sub_at:
            try:
                self._subscribe()
            except MQTTError as e:
                self._lost(e)
        if self.connected:
            # MicroPython: one message per step, so each step's gc.collect() clears
            # the encoder's garbage before the next payload is built (less
            # fragmentation); a backlog still goes out without waiting (wait 0 below).
            # MicroPython: while commands wait, no telemetry enters the window, and
            # they run once it has drained: the modules they load then find room
            # in a heap without in-flight payloads pinned between the holes.
            # The wait is bounded (timeout_ms): an acknowledgement lost to a full
            # heap leaves its message in the window until a reconnect, and must not
            # hold commands, and the telemetry behind them, for that long.
            global _cmd_wait
            c = self._cmds
            w = c and _MP and len(self._client.window)
            if not w:
                _cmd_wait = 0
            elif not _cmd_wait:
                _cmd_wait = now + self.cfg["timeout_ms"]
            elif now >= _cmd_wait:
                w = 0
            if not (c and _MP) and now >= self._next_try:
                self._flush(1 if _MP else 0)
            if c and not w:
                try:
                    self._run_commands()
                except MemoryError:  # no packet is half done here: the connection stays
                    self._drop_cmds()
        if self._reboot and (now >= self._reboot or (self.connected and not len(self._client.window))):
            b.reset()
        if not self.connected and now >= self._next_try:
            self._try_connect()
            now = b.ticks_ms()
        if _MP:
            gc.collect()
        if self.cfg["debug"] and now >= self._next_stats:
            self._next_stats = now + self.cfg["stats_ms"]
            if self._log is print:  # streams the dict: no ~1 KB string is built at 64K
                print("stats", self.stats, "mem=%s" % b.free_memory())
            else:
                self._say("stats %s mem=%s" % (self.stats, b.free_memory()))
        wait = _STEP_MS
        for s in self.streams:
            wait = min(wait, s[5] - now)
        if self.connected:
            if self._qn and len(self._client.window) < self._client.max_inflight and now >= self._next_try:
                wait = 0
            try:
                self._client.poll(max(0, wait))
            except MQTTError as e:
                self._lost(e)
        else:
            wait = min(wait, self._next_try - now)
            b.sleep_ms(max(0, wait))

    # ------------------------------------------------------------ connection

    def _try_connect(self):
        b, c, cl = self.board, self.cfg, self._client
        try:
            if not b.link_up() and not b.connect_network(c["net_timeout_ms"]):
                raise OSError(101, "no network in %d ms" % c["net_timeout_ms"])
            sock = b.connect(c["broker_host"], c["broker_port"], c["timeout_ms"])
            if c.get("tls_ca"):  # edgewire.tls loads only then (docs/firmware.md, "TLS")
                from edgewire import tls
                sock = tls.wrap(sock, b, c)
            # c counts CONNECT attempts, not successes: an attempt that timed out may still
            # reach the broker later and leave a will behind, which must name its own
            # session, never the one that follows (docs/firmware.md, "Connection numbers").
            self.conn += 1
            conn = self.conn
            cl.will = (self.topics["status"], wire.encode_death(self.device_id, self.boot, conn, "lost"), 1, True)
            cl.window.pop(self._birth_pid, None)  # an unacknowledged older birth is superseded
            cl.connect(sock)
            self._up_since = b.ticks_ms()
            if cl.q2_dropped:
                self.stats["q2_dropped"] = cl.q2_dropped
            for pid in list(self._tel):  # a new session dropped these (docs/decisions.md, D9)
                if pid not in cl.window:
                    del self._tel[pid]
            m = {}
            for s in self.streams:
                m[s[0]] = {"u": s[4], "q": s[3], "i": s[2]}
            self._birth_pid = cl.publish(self.topics["status"], wire.encode_birth(
                self.device_id, self.boot, conn, b.ticks_ms(), __version__, b.name, m), 1, True)
            if c["commands"]:
                self._subscribe()
            # Counted once the session is complete: birth sent, the command
            # subscription answered (a refused one is retried while telemetry goes on).
            self.stats["connects"] += 1
            if self.stats["connects"] > 1:
                self.stats["reconnects"] += 1
            self._say("edgewire %s: connected to %s:%d as %s boot=%d c=%d"
                      % (b.name, c["broker_host"], c["broker_port"], self.device_id, self.boot, conn))
        except (OSError, MQTTError, ValueError) as e:  # ValueError: a TLS certificate refused (edgewire.tls)
            self.stats["conn_failures"] += 1
            self._lost(e)

    def _subscribe(self):
        """Subscribe to commands. Refused (SUBACK 0x80, e.g. a broker ACL): counted,
        logged, retried after a backoff of its own; the session goes on."""
        g = self._client.subscribe(self.topics["cmd"], 1)
        if g == REFUSED:
            n = self.stats["sub_refused"] = self.stats.get("sub_refused", 0) + 1
            c = self.cfg  # the delay doubles with every refusal, up to backoff_max_ms
            d = min(c["backoff_min_ms"] << min(n - 1, 20), c["backoff_max_ms"])
            self._sub_at = self.board.ticks_ms() + d
            self._say("cmd subscription refused (SUBACK 0x80); retry in %d ms" % d)
            return
        self._sub_at = 0
        if g != 1:
            self._say("cmd subscription granted at QoS %d" % g, True)

    def _on_wait(self):
        """Before every socket wait of the MQTT client (at least every 500 ms): feed
        the watchdog; a link the board reports down ends the session at once."""
        self.board.feed()
        if not self.board.link_up():
            raise MQTTError("network link down")

    def _lost(self, err):
        self._client.close()
        b, c = self.board, self.cfg
        now = b.ticks_ms()
        if self._up_since >= 0 and now - self._up_since >= c["stable_ms"]:
            self._attempt = 0
        self._up_since = -1
        d = c["backoff_min_ms"] << min(self._attempt, 20)
        d = min(d, c["backoff_max_ms"])
        self._attempt += 1
        d = d // 2 + b.random_u32() % (d // 2 + 1)  # jitter: half to all of d
        self._next_try = now + d
        self._say("connection lost (%s); retry in %d ms" % (err, d), True)

    # ------------------------------------------------------------ telemetry

    def _sample(self, now):
        st = self.stats
        cap = len(self._qv)
        for i in range(len(self.streams)):
            s = self.streams[i]
            if s[5] > now:
                continue
            s[5] += s[2]
            if s[5] <= now:  # fell behind (a long connect): skip, do not burst
                s[5] = now + s[2]
            try:
                v = self.board.read(s[1])
                if not (v is None or isinstance(v, (bool, int, float))
                        or (isinstance(v, str) and len(v) <= wire.MAX_TEXT)):
                    raise SensorError("value %r is not a number, bool or short string" % (v,))
            except Exception as e:  # a driver failure is a counted fault, never a crash
                st["faults"] += 1
                v = (str(e) or type(e).__name__)[:wire.MAX_TEXT]
                i |= _ERR
            st["readings"] += 1
            if self._qn == cap:  # full: drop the oldest
                self._qh = (self._qh + 1) % cap
                self._qn -= 1
                st["dropped"] += 1
            j = (self._qh + self._qn) % cap
            if type(v) is float:
                self._qf[j] = v
                v = None
                i |= _FLT
            self._qs[j] = i
            self._qv[j] = v
            self._qt[j] = now
            self._qn += 1
        st["queued"] = self._qn

    def _reading(self, k):
        """The queued reading k places after the oldest, as the wire writes it
        (a tuple: one allocation where a list takes two)."""
        j = (self._qh + k) % len(self._qv)
        f = self._qs[j]
        name = self.streams[f & _IDX][0]
        if f & _ERR:
            return (name, None, self._qt[j], self._qv[j])
        return (name, self._qf[j] if f & _FLT else self._qv[j], self._qt[j])

    def _take(self, picked):
        """Remove the readings at queue offsets `picked` (ascending); the others
        keep their order. Only the slots up to the last picked one move."""
        qs, qf, qv, qt = self._qs, self._qf, self._qv, self._qt
        cap = len(qv)
        h = self._qh
        w = picked[-1]
        p = len(picked) - 1
        for r in range(w, -1, -1):
            if p >= 0 and picked[p] == r:
                p -= 1
                continue
            a = (h + r) % cap
            b = (h + w) % cap
            qs[b] = qs[a]
            qf[b] = qf[a]
            qv[b] = qv[a]
            qt[b] = qt[a]
            w -= 1
        for r in range(len(picked)):
            qv[(h + r) % cap] = None  # let the values go
        self._qh = (h + len(picked)) % cap
        self._qn -= len(picked)
        self.stats["queued"] = self._qn

    def _flush(self, limit=0):
        """Send queued readings, grouped by QoS, while the window has room; at
        most `limit` messages when limit > 0 (0: no limit)."""
        cl = self._client
        st = self.stats
        n = 0
        while self._qn and cl.connected and not (limit and n >= limit):
            n += 1
            qos = self.streams[self._qs[self._qh] & _IDX][3]
            if qos and len(cl.window) >= cl.max_inflight:
                return
            if not self.board.link_up():  # nothing goes into a dead link, nor counts as sent
                self._lost("network link down")
                return
            try:
                picked = []
                for k in range(self._qn):
                    if self.streams[self._qs[(self._qh + k) % len(self._qs)] & _IDX][3] == qos:
                        picked.append(k)
                        if len(picked) >= self._batch:
                            break
                payload = None
                while payload is None:
                    rs = [self._reading(k) for k in picked]
                    try:
                        payload = wire.encode_telemetry(self.device_id, self.boot, self.seq + 1,
                                                        self.board.ticks_ms(), rs, self.board.time_ms())
                    except (ValueError, TypeError) as e:  # oversized, or a value msgpack refuses
                        if len(picked) > 1:
                            picked = picked[:len(picked) // 2]
                        else:
                            self._take(picked)
                            st["dropped"] += 1
                            self._say("reading dropped: %s" % (e,), True)
                            break
                if payload is None:
                    continue
                pid = cl.publish(self.topics["telemetry"], payload, qos)
            except MemoryError:
                # Out of heap before anything went out: the readings stay queued, the
                # session stays. Degrade instead of reconnecting (an OOM loop): half
                # the batch, a pause of backoff_min_ms, counted; batches grow back
                # by one reading per message sent.
                st["oom"] += 1
                self._batch = max(1, self._batch // 2)
                self._next_try = self.board.ticks_ms() + self.cfg["backoff_min_ms"]
                return
            except MQTTError as e:
                self._take(picked)
                self.seq += 1
                if qos and cl.last_pid in cl.window:  # in the client's window: resent after the reconnect
                    self._count_sent(qos, cl.last_pid, len(rs))
                else:  # written nowhere (QoS 0, or out of memory before it entered the
                    # window): its readings are gone, its seq is a gap
                    st["lost_q0" if qos == 0 else "lost_oom"] += 1
                    st["dropped"] += len(rs)
                self._lost(e)
                return
            self._take(picked)
            self.seq += 1
            if self._batch < self.cfg["batch_max"]:
                self._batch += 1
            self._count_sent(qos, pid, len(rs))

    def _count_sent(self, qos, pid, n):
        st = self.stats
        st[_SENT[qos]] += 1
        st["sent_readings"] += n
        if qos:
            self._tel[pid] = qos
        else:
            st["acked_q0"] += 1

    def _on_ack(self, pid, qos):
        if self._tel.pop(pid, None) is not None:
            self.stats[_ACKED[qos]] += 1

    # ------------------------------------------------------------ commands

    def _on_message(self, topic, payload, retained):
        if topic != self.topics["cmd"]:
            return
        if len(self._cmds) >= _CMD_PENDING:
            self.stats["cmd_dropped"] += 1
            return
        self._cmds.append(payload)  # (size, head) for one over max_packet (toobig.oversized)

    def _run_commands(self):
        if not self._cmds:
            return
        # Commands are rare: the msgpack decoder and the command code are imported
        # when one arrives and, on MicroPython, dropped again afterwards, one after
        # the other, so that only one of them takes RAM at a time (~2.7 KB each).
        if _MP:
            gc.collect()  # this step's telemetry garbage goes before a module loads
        cmds = self._cmds
        i = 0
        while i < len(cmds):
            if not isinstance(cmds[i], bytes):  # decoded in an earlier round, or oversized
                i += 1
                continue
            try:
                cmds[i] = wire.decode_command(cmds[i])
                i += 1
            except ValueError as e:
                cmds.pop(i)
                self.stats["bad_commands"] += 1
                self._say("bad command: %s" % (e,), True)
        if _MP:
            _unload("unpack")  # the msgpack decoder: only commands use it
            gc.collect()
        if not cmds:
            return
        while cmds and self.connected:
            c = cmds.pop(0)
            if isinstance(c, tuple):  # (size, head): too large to receive, not executed
                from edgewire.toobig import oversized
                res = oversized(self, c[0], c[1])
            else:
                from edgewire import commands
                res = commands.handle(self, c)
            try:
                self._client.publish(self.topics["result"], res, 1)
            except MQTTError as e:
                self._lost(e)
            except MemoryError:  # nothing went out, the session stays; the sender's timeout answers
                self.stats["cmd_dropped"] += 1
            res = None
        if _MP:
            _unload("commands")
            _unload("toobig")

    # ------------------------------------------------------------ logging

    def _say(self, msg, debug=False):
        if self._log is not None and (not debug or self.cfg["debug"]):
            self._log(msg)


def _unload(name):
    """Forget edgewire.<name> so its RAM comes back (imported again when needed)."""
    import sys
    import edgewire
    sys.modules.pop("edgewire." + name, None)
    try:
        delattr(edgewire, name)
    except (AttributeError, KeyError):  # MicroPython raises KeyError for a missing one
        pass
