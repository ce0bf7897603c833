"""kopf handlers: I/O only. They gather the world, call the pure planner, and apply its plan."""
