"""How well the branching mask follows the lesion (README.md)."""
