"""Training one network: DataConfig/TrainConfig/RunConfig, data, the lr schedule, checkpoints, `fit`/`evaluate`.

Imports neither Ray nor Optuna: a search drives `fit` through its per-epoch callback.
"""
