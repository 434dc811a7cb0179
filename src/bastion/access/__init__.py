"""Access control: keys, signed artifacts, attestations, safe loading, caller tokens and policies."""
