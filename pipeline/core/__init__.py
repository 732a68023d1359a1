"""What every stage shares: the user-facing error base and the stage table."""
