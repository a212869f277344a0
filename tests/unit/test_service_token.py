"""The CRM's own token renews itself before it expires."""

from __future__ import annotations

import time

from servicekit.client import MintedServiceToken


class CountingIssuer:
    """Stands in for TokenIssuer: only the renewal timing is under test, not signing."""

    def __init__(self) -> None:
        self.minted = 0

    def mint(self, subject, roles, lifetime_s) -> str:
        self.minted += 1
        return f"token-{self.minted}-{subject}-{','.join(roles)}-{lifetime_s}"


def test_the_token_is_reused_until_a_fifth_of_its_lifetime_is_left():
    issuer = CountingIssuer()
    token = MintedServiceToken(issuer, "crm", ["inventory.read"], lifetime_s=0.5)

    first = token()
    assert token() == first == "token-1-crm-inventory.read-0.5"
    time.sleep(0.45)  # 90 % of the lifetime gone

    assert token() == "token-2-crm-inventory.read-0.5"
