"""The agent's workspace: its own repository beside its files (``git``: the one path that runs git on
the host) and getting work out of it without ever losing it (``work``)."""
