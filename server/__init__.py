"""How spanlake is served: HTTP ingestion, Flight SQL, the maintenance daemon, the command line."""
