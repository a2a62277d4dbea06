# Fake `errno` for the port fakes: the numbers each port's sockets raise.
# esp32: newlib's errno (ports/esp32 builds with MICROPY_USE_INTERNAL_ERRNO 0):
# EINPROGRESS 119, EALREADY 120, EISCONN 127, ENOTCONN 128, ETIMEDOUT 116.
# rp2: MicroPython's internal errno (py/mperrno.h), the Linux numbers.
import fakehw

EPERM = 1
ENOENT = 2
EIO = 5
EAGAIN = 11
ENOMEM = 12
EACCES = 13
EEXIST = 17
ENODEV = 19
EISDIR = 21
EINVAL = 22
ECONNRESET = 104
ECONNREFUSED = 111
EHOSTUNREACH = 113
if fakehw.PORT == "esp32":
    ETIMEDOUT = 116
    EALREADY = 120
    EINPROGRESS = 119
    EISCONN = 127
    ENOTCONN = 128
    ECONNABORTED = 113
    ENOBUFS = 105
else:
    ETIMEDOUT = 110
    EALREADY = 114
    EINPROGRESS = 115
    EISCONN = 106
    ENOTCONN = 107
    ECONNABORTED = 103
    ENOBUFS = 105
errorcode = {}
