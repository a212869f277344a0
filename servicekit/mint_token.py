"""Mint a JWT for a subject and roles with the configured key; prints the token alone.

mint-token --subject alice --roles customer
mint-token --subject ops --roles inventory.read,inventory.write --lifetime 600
"""

from __future__ import annotations

import argparse
import os
import sys

from servicekit.jwt import AuthSettings, TokenIssuer
from servicekit.settings import SettingsError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subject", required=True, help="the principal: a customer id, or a service name")
    parser.add_argument("--roles", default="", help="comma-separated: inventory.read, inventory.write, customer")
    parser.add_argument("--lifetime", type=int, default=3600, help="seconds until it expires (default 3600)")
    parser.add_argument(
        "--service",
        default="inventory",
        choices=["inventory", "crm"],
        help="whose JWT_* settings to use when they differ (INVENTORY_JWT_*, CRM_JWT_*)",
    )
    args = parser.parse_args(argv)
    if args.lifetime <= 0:
        parser.error("--lifetime must be at least 1 second")
    try:
        issuer = TokenIssuer(AuthSettings.from_env(os.environ, args.service.upper()))
    except SettingsError as error:
        sys.exit(f"mint-token: {error}")
    roles = [role.strip() for role in args.roles.replace(" ", ",").split(",") if role.strip()]
    print(issuer.mint(args.subject, roles, args.lifetime))


if __name__ == "__main__":
    main()
