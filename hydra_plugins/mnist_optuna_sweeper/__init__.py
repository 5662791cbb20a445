"""The project's Optuna sweeper for Hydra (works with Optuna 5; see ``optuna_sweeper``)."""
