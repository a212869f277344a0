"""The mint-token command: servicekit's token minting, limited to the roles of both contracts.

Here because the CRM is the one part that knows both: its customers' role and the inventory
roles it calls with (servicekit knows neither service).
"""

from __future__ import annotations

from crm_svc.servicer import CUSTOMER_ROLE
from inventory_client.roles import READ_ROLE, WRITE_ROLE
from servicekit import mint_token

KNOWN_ROLES = (READ_ROLE, WRITE_ROLE, CUSTOMER_ROLE)


def main(argv: list[str] | None = None) -> None:
    mint_token.main(argv, KNOWN_ROLES)


if __name__ == "__main__":
    main()
