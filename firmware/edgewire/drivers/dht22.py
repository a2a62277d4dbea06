# AM2302 / DHT22 temperature and humidity sensor on one GPIO, the way
# micropython-lib's dht driver uses the port: the port's C function
# dht_readinto(pin, buf) does the start pulse and times the 40 bits (machine.
# dht_readinto on esp32 and rp2); this driver checks the frame and decodes it.
# DHT22(readinto, pin); a board's dht(pin) returns both.
#
# Frame: humidity x10 (16 bits), temperature x10 (16 bits, bit 15 the sign),
# checksum = low byte of the sum of the first four bytes. The sensor measures at
# most every 2 s; read() returns the last good frame while it is younger.
# Errors: OSError(ETIMEDOUT) from the port (no answer: unplugged), ValueError
# for a checksum mismatch or values outside the sensor's range.


class DHT22:
    MIN_MS = 2000

    def __init__(self, readinto, pin, clock=None):
        self._readinto = readinto
        self.pin = pin
        self.clock = clock  # ms; None: never reuse a frame
        self.buf = bytearray(5)
        self._at = None
        self._val = None

    def read(self):
        """-> (temperature C, humidity %RH)."""
        now = self.clock() if self.clock is not None else None
        if self._at is not None and now is not None and now - self._at < self.MIN_MS:
            return self._val
        b = self.buf
        self._readinto(self.pin, b)
        if (b[0] + b[1] + b[2] + b[3]) & 0xFF != b[4]:
            raise ValueError("DHT22 checksum error")
        h = ((b[0] << 8) | b[1]) / 10
        t = (((b[2] & 0x7F) << 8) | b[3]) / 10
        if b[2] & 0x80:
            t = -t
        if h > 100 or not -40 <= t <= 80:
            raise ValueError("DHT22 frame out of range (%s C, %s %%)" % (t, h))
        self._at = now
        self._val = (t, h)
        return self._val
