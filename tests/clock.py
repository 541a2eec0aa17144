"""A clock that tests move by hand, passed to tlsm.open(clock=...)."""


class ManualClock:
    def __init__(self, start=1_700_000_000.0):
        self.now = start

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds
