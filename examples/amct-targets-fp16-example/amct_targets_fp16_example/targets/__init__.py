"""Device profiles shipped by the example plugin."""
