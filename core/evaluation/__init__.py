"""Evaluation: pure metrics, threshold rules, evaluating a run, ensembles as evaluators, explanations, the shortcut audit, the model card and prediction."""
