"""Pure functions, no nn.Module state. Each operator folder has a reference (the spec) and faster forms."""
