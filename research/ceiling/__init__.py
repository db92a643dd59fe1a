"""Study: see README.md in this folder."""
