"""The CRM's own token renews itself before it expires."""

from __future__ import annotations

from servicekit.credentials import MintedServiceToken


class CountingIssuer:
    """Stands in for TokenIssuer: only the renewal timing is under test, not signing."""

    def __init__(self) -> None:
        self.minted = 0

    def mint(self, subject, roles, lifetime_s) -> str:
        self.minted += 1
        return f"token-{self.minted}-{subject}-{','.join(roles)}-{lifetime_s}"


class Clock:
    """The monotonic clock the token reads, moved by the test instead of by sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_token_is_reused_until_a_fifth_of_its_lifetime_is_left():
    clock = Clock()
    token = MintedServiceToken(CountingIssuer(), "crm", ["inventory.read"], lifetime_s=600, clock=clock)

    first = token()
    clock.now += 479  # just short of 80 % of the lifetime
    assert token() == first == "token-1-crm-inventory.read-600"

    clock.now += 2  # past 80 %: a fifth is left
    assert token() == "token-2-crm-inventory.read-600"
    assert token() == "token-2-crm-inventory.read-600"
