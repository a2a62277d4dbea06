PORT = "esp32"
