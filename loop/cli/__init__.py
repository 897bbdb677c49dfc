"""The `matloop` command: `main` parses and dispatches; `generate`, `screen` and `assess` are the commands that
run a campaign's rooms on structures outside a campaign."""
