"""MLflow: the run hierarchy (`runs`: one parent run per campaign, one nested run per round) and what a campaign
logs there from its store (`campaign`). Only `loop` talks to MLflow."""
