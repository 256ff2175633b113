"""Spawning an agent: ``spec`` (pure: a request -> a ``ContainerSpec``), ``runner`` (the one runner: create,
start, hand over, undo), ``pool`` (the warm pool's lifecycle on the engine)."""
