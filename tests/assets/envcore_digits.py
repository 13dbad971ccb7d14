"""A tiny multi-turn environment for the environment tests (a plugin file, so torchrun ranks
can import it): the model must write the row's digit; each wrong turn gets feedback."""

from rlfoundry.environments import Environment, EnvStep, EpisodeStart, register_environment


@register_environment("test_digits")
class Digits(Environment):
    """Say the row's digit; feedback 'higher'/'lower'/'no digit' after each wrong turn."""

    def __init__(self, flaky: bool = False):
        self.flaky = flaky

    def reset(self, row):
        return EpisodeStart([{"role": "user", "content": row["prompt"]}],
                            {"digit": int(row["digit"]), "turn": 0})

    def step(self, state, text):
        state = {**state, "turn": state["turn"] + 1}
        if self.flaky and "a" in text:
            raise RuntimeError("flaky step")
        digits = [int(c) for c in text if c.isdigit()]
        shaped = len(set(text)) / 10  # a dense part, so groups have varied rewards
        if digits and digits[0] == state["digit"]:
            return EnvStep(reward=1.0 + shaped, done=True, state=state, metrics={"tool_calls": 1})
        hint = "no digit" if not digits else ("higher" if digits[0] < state["digit"] else "lower")
        return EnvStep([{"role": "user", "content": hint}], reward=shaped, state=state,
                       metrics={"tool_calls": 1, "tool_errors": float(not digits)})
