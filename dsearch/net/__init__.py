"""The network: ModelConfig and its rules, presets, closed-form cost, the generator, memory-efficient Functions.

Nothing here knows about data, training, Ray or Optuna; `config`, `presets` and `cost` don't import torch.
"""
