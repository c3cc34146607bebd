"""Where and when spanlake stores data: settings, catalog, object store, decoding, partitions."""
