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
# RAM (MicroPython): a Device is ~1 KB plus ~50-70 B per queued reading
# (queue_size, default 64) and the MQTT window (max_inflight messages).

import gc

from edgewire import __version__, wire
from edgewire.boards import SensorError
from edgewire.mqtt import MQTTClient, MQTTError

_STEP_MS = 200      # longest wait in one step(): bounds stop() latency
_CMD_PENDING = 8    # commands received but not yet executed
_MP = hasattr(gc, "mem_free")  # MicroPython: collect each step to keep the heap unfragmented

STAT_KEYS = ("readings", "faults", "sent_q0", "sent_q1", "sent_q2", "acked_q0", "acked_q1",
             "acked_q2", "queued", "dropped", "connects", "reconnects", "conn_failures",
             "commands", "bad_commands", "cmd_dropped")


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
        self._q = []        # readings to send: (qos, stream, value, uptime_ms[, error])
        self._cmds = []     # command payloads received, not yet executed
        self._cache = []    # [(command id, result payload)], newest last
        self._tel = {}      # in-flight telemetry packet id -> qos
        self._client = None
        self._running = False
        self._reboot = 0
        self._next_try = 0
        self._attempt = 0
        self._up_since = -1
        self._next_stats = 0
        self._birth_pid = 0

    # ------------------------------------------------------------ lifecycle

    def run(self):
        """Sample, publish and reconnect until stop(). A board reset propagates."""
        self._running = True
        try:
            while self._running:
                self.step()
            self._goodbye()
        finally:
            if self._client is not None:
                self._client.close()

    def stop(self):
        """Ask run() to finish: it publishes death ("shutdown") and DISCONNECTs."""
        self._running = False

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
        now = self.board.ticks_ms()
        for s in self.streams:
            s[5] = now
        self._next_stats = now + c["stats_ms"]

    def step(self):
        """One round: sample what is due, (re)connect when due, send, handle
        inbound packets and commands, then wait at most ~200 ms."""
        b = self.board
        if not self.boot:
            self._begin()
        now = b.ticks_ms()
        self._sample(now)
        if self.connected:
            self._flush()
            self._run_commands()
        if self._reboot and (now >= self._reboot or (self.connected and not self._client.inflight())):
            b.reset()
        if not self.connected and now >= self._next_try:
            self._try_connect()
            now = b.ticks_ms()
        self.stats["queued"] = len(self._q)
        if _MP:
            gc.collect()
        if self.cfg["debug"] and now >= self._next_stats:
            self._next_stats = now + self.cfg["stats_ms"]
            self._say("stats %s mem=%s" % (self.stats, b.free_memory()))
        wait = _STEP_MS
        for s in self.streams:
            wait = min(wait, s[5] - now)
        if self.connected:
            if self._q and self._client.inflight() < self._client.max_inflight:
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
            if not b.network_up() and not b.connect_network(c["net_timeout_ms"]):
                raise OSError(101, "network did not come up within %d ms" % c["net_timeout_ms"])
            sock = b.connect(c["broker_host"], c["broker_port"], c["timeout_ms"])
            # c counts CONNECT attempts, not successes: an attempt that timed out may still
            # reach the broker later and leave a will behind, which must name its own
            # session, never the one that follows (docs/firmware.md, "Connection numbers").
            self.conn += 1
            conn = self.conn
            cl.set_will(self.topics["status"], wire.encode_death(self.device_id, self.boot, conn, "lost"), 1, True)
            cl.discard(self._birth_pid)  # an unacknowledged older birth is superseded
            cl.connect(sock)
            self.stats["connects"] += 1
            if self.stats["connects"] > 1:
                self.stats["reconnects"] += 1
            self._up_since = b.ticks_ms()
            self._birth_pid = cl.publish(self.topics["status"], self._birth(), 1, True)
            if c["commands"]:
                granted = cl.subscribe(self.topics["cmd"], 1)
                if granted != 1:
                    self._say("cmd subscription granted at QoS %d" % granted, True)
            self._say("edgewire %s: connected to %s:%d as %s boot=%d c=%d"
                      % (b.name, c["broker_host"], c["broker_port"], self.device_id, self.boot, conn))
        except (OSError, MQTTError) as e:
            self.stats["conn_failures"] += 1
            self._lost(e)

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

    def _birth(self):
        m = {}
        for s in self.streams:
            m[s[0]] = {"u": s[4], "q": s[3], "i": s[2]}
        return wire.encode_birth(self.device_id, self.boot, self.conn, self.board.ticks_ms(),
                                 __version__, self.board.name, m)

    def _goodbye(self):
        cl = self._client
        if cl is None or not cl.connected:
            return
        try:
            self._flush()
            cl.publish(self.topics["status"], wire.encode_death(self.device_id, self.boot, self.conn, "shutdown"), 1, True)
            end = self.board.ticks_ms() + self.cfg["timeout_ms"]
            while cl.inflight() and self.board.ticks_ms() < end:
                cl.poll(50)
            cl.disconnect()
        except MQTTError:
            cl.close()

    # ------------------------------------------------------------ telemetry

    def _sample(self, now):
        for s in self.streams:
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
                r = (s[3], s[0], v, now)
            except Exception as e:  # a driver failure is a counted fault, never a crash
                self.stats["faults"] += 1
                r = (s[3], s[0], None, now, (str(e) or type(e).__name__)[:wire.MAX_TEXT])
            self.stats["readings"] += 1
            if len(self._q) >= self.cfg["queue_size"]:
                self._q.pop(0)
                self.stats["dropped"] += 1
            self._q.append(r)

    def _flush(self):
        """Send queued readings, grouped by QoS, while the window has room."""
        cl = self._client
        while self._q and cl.connected:
            qos = self._q[0][0]
            if qos and cl.inflight() >= cl.max_inflight:
                return
            idx = []
            for i in range(len(self._q)):
                if self._q[i][0] == qos:
                    idx.append(i)
                    if len(idx) >= self.cfg["batch_max"]:
                        break
            payload = None
            while payload is None:
                rs = [list(self._q[i][1:]) for i in idx]
                try:
                    payload = wire.encode_telemetry(self.device_id, self.boot, self.seq + 1,
                                                    self.board.ticks_ms(), rs, self.board.time_ms())
                except (ValueError, TypeError) as e:  # oversized, or a value msgpack refuses
                    if len(idx) > 1:
                        idx = idx[:len(idx) // 2]
                    else:
                        self._q.pop(idx[0])
                        self.stats["dropped"] += 1
                        self._say("reading dropped: %s" % (e,), True)
                        idx = None
                        break
            if idx is None:
                continue
            for i in reversed(idx):
                self._q.pop(i)
            self.seq += 1
            try:
                pid = cl.publish(self.topics["telemetry"], payload, qos)
            except MQTTError as e:
                # QoS 1/2: the message is in the client's window and is resent after reconnect.
                if qos:
                    self._count_sent(qos, cl.last_pid)
                self._lost(e)
                return
            self._count_sent(qos, pid)

    def _count_sent(self, qos, pid):
        self.stats["sent_q%d" % qos] += 1
        if qos:
            self._tel[pid] = qos
        else:
            self.stats["acked_q0"] += 1

    def _on_ack(self, pid, qos):
        if self._tel.pop(pid, None) is not None:
            self.stats["acked_q%d" % qos] += 1

    # ------------------------------------------------------------ commands

    def _on_message(self, topic, payload, retained):
        if topic != self.topics["cmd"]:
            return
        if len(self._cmds) >= _CMD_PENDING:
            self.stats["cmd_dropped"] += 1
            return
        self._cmds.append(payload)

    def _run_commands(self):
        if not self._cmds:
            return
        # Commands are rare: their code is imported when one arrives and, on
        # MicroPython, dropped again afterwards (~2 KB of heap back).
        from edgewire import commands
        while self._cmds and self.connected:
            res = commands.handle(self, self._cmds.pop(0))
            if res is not None:
                try:
                    self._client.publish(self.topics["result"], res, 1)
                except MQTTError as e:
                    self._lost(e)
        if _MP:
            import sys
            import edgewire
            sys.modules.pop("edgewire.commands", None)
            try:
                delattr(edgewire, "commands")
            except AttributeError:
                pass

    # ------------------------------------------------------------ logging

    def _say(self, msg, debug=False):
        if self._log is not None and (not debug or self.cfg["debug"]):
            self._log(msg)
