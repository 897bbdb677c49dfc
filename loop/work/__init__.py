"""The work of each stage, as functions of the campaign config and store: generation, funnel, screening,
acquisition, references, retraining. A stage's `compute` calls one of them; benchmarks and commands call them too."""
