"""Training modules, one per method, all on the shared loop of ``_trainer``; they call only the
ops and ``pytransfer.nn`` losses."""
