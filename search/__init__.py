"""How plans are explored."""
