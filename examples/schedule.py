"""Per-round client configuration: halve the clients' learning rate every two rounds.

    python -m server --round-config examples.schedule:step_decay --lr 0.1 ...
"""


def step_decay(round_number: int, recipe) -> dict:
    return {"lr": recipe.lr * 0.5 ** ((round_number - 1) // 2)}
