"""Read models of the campaign store: what each round did (`round_science`), which candidates are still on offer,
what counts as an oracle call, and whether a label is a known crystal. Status, MLflow and the report all read these."""
