# Edgewire device SDK and wire protocol. This package runs on MicroPython
# devices and in CPython; keep it free of CPython-only imports.
__version__ = "0.1.0"
