"""The hallucination benchmark: its run matrix, its metrics, its figure and its markdown report."""
