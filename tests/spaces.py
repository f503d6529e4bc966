"""The tiny search space the Ray tests share: synthetic 8×8 images, DenseNet-BC of depth 10 or 16, a few epochs.

Trial 0 (seeded, lr 0.1) trains first; with one trial at a time ASHA then stops any trial whose rung-1
val_acc falls below the median of those seen there, e.g. the lr 1e-4 ones. Arguments left as strings
("NUM", ...) stay placeholders for a test to fill in.
"""

TEMPLATE = """
name: {name}
data: {{name: synthetic, augment: true, val_size: 100, synthetic_size: 400, synthetic_image_size: 8}}
{extra}budget: {{max_epochs: {epochs}, num_samples: {num}, grace_period: {grace}, reduction_factor: 2, \
max_concurrent_trials: {conc}}}
resources: {{cpu: 1, gpu: 0}}
sampler: {{type: random, seed: 3}}
fixed: {{model.variant: densenet-bc, train.batch_size: 32}}
params:
  model.depth: {{type: int, low: 10, high: 16, step: 6}}
  model.growth_rate: {{type: int, low: 2, high: {growth_high}}}
  train.lr: {{type: categorical, choices: [0.1, 0.0001]}}
seed_trials: [{{model.depth: 10, model.growth_rate: 6, train.lr: 0.1}}]
"""


def tiny_space(name="tiny", epochs=3, num="NUM", grace=1, conc="CONC", growth_high=12, extra="") -> str:
    """The space's YAML; `extra` is inserted as top-level lines (constraints, objectives)."""
    return TEMPLATE.format(name=name, epochs=epochs, num=num, grace=grace, conc=conc, growth_high=growth_high,
                           extra=extra)
