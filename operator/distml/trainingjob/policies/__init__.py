"""TrainingJob's policies, one per module. Each is `decide(observation) -> Outcome | None`:
pure, a function of the observation (the time included) alone. distml.trainingjob.planner
runs them in its written order."""
