"""Online garbage collection, upload purging and the maintenance that runs inside ``berth serve``.

See docs/gc.md for the safety argument. Modules: ``inventory`` (parallel listing), ``mark``,
``sweep`` (the GC half of the handshake), ``purge`` (stale uploads), ``lease``, ``report``,
``run`` (one ``berth gc``), ``background`` (scheduled purge and read-only reload in serve).
"""
