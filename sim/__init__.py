"""The Edgewire fleet simulator: the real device SDK on simulated boards."""
