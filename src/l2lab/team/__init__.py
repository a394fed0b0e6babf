"""Team mode's own parts: a local stack of shared engines, and a clone's checks (the sweeps run as everywhere)."""
