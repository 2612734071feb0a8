"""secret_sharing."""
