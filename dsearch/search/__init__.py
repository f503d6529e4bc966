"""The search: the space (schema, rules, sampling, YAML io), the study record, the run lock, the Ray runner,
the live view. Ray and Optuna are imported here and nowhere below.
"""
