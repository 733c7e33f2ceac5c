"""backdoor-bench: an experiment runner for backdoor attacks and defenses on image classifiers."""

__version__ = "0.1.0"
