"""What each view is: its Arrow schema, and how a decoded block becomes rows (pure: arrays in, arrays out)."""
