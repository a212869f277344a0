"""Mint a JWT for a subject and roles with the configured key; prints the token alone.

mint-token --subject alice --roles customer
mint-token --subject ops --roles inventory.read,inventory.write --lifetime 600
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Collection

from servicekit.jwt import AuthSettings, TokenIssuer
from servicekit.settings import SettingsError


def main(argv: list[str] | None = None, known_roles: Collection[str] = ()) -> None:
    """The command; `known_roles` are the only roles it mints (the kit knows no service's:
    crm_svc.mint_token passes those of both contracts)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subject", required=True, help="the principal: a customer id, or a service name")
    parser.add_argument("--roles", default="", help=f"comma-separated, of: {', '.join(known_roles)}")
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
    unknown = [role for role in roles if role not in known_roles]
    if unknown:
        # A misspelt role would mint a token every call refuses with PERMISSION_DENIED.
        parser.error(f"unknown role {', '.join(unknown)}: the known roles are {', '.join(known_roles)}")
    print(issuer.mint(args.subject, roles, args.lifetime))
