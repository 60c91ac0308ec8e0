"""Built-in compression passes, one module each; each registers itself with the
`register_passes` hook exactly as a third-party plugin does."""
