"""Device profiles shipped with amct-targets (YAML data; this file makes the folder a package
so the profiles are installed inside the wheel and found with importlib.resources)."""
