"""How few sampling steps each pass of the main job can take (README.md)."""
