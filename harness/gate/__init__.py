"""Release gates: budgets, statistical comparison with a baseline, history change points."""
