"""Training modules for the four methods; they call only the ops and ``pytransfer.nn`` losses."""
