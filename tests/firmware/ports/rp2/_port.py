PORT = "rp2"
