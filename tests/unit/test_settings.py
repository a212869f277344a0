"""Settings come from an environment mapping; weak or missing secrets are refused."""

from __future__ import annotations

import pytest

from crm_svc.settings import CrmSettings
from inventory_svc.settings import InventorySettings
from servicekit.jwt import AuthSettings
from servicekit.settings import SettingsError

SECRET = "s" * 32


def test_the_service_prefixed_name_wins_over_the_plain_one():
    settings = InventorySettings.from_env(
        {
            "DATABASE_URL": "sqlite:///plain.db",
            "INVENTORY_DATABASE_URL": "sqlite:///prefixed.db",
            "JWT_SECRET": SECRET,
        }
    )

    assert settings.database_url == "sqlite:///prefixed.db"


def test_defaults_serve_the_embedded_sqlite_on_loopback():
    settings = InventorySettings.from_env({"JWT_SECRET": SECRET})

    assert (settings.database_url, settings.listen_address) == ("sqlite:///var/inventory.db", "127.0.0.1:50051")


def test_secrets_stay_out_of_the_settings_repr():
    settings = InventorySettings.from_env({"JWT_SECRET": SECRET, "DATABASE_URL": "postgresql://u:pw@db/x"})

    assert SECRET not in repr(settings)
    assert "pw" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({}, "JWT_SECRET"),
        ({"JWT_SECRET": "short"}, "JWT_SECRET"),
        ({"JWT_SECRET": SECRET, "JWT_ALGORITHM": "none"}, "JWT_ALGORITHM"),
        ({"JWT_ALGORITHM": "RS256"}, "JWT_PUBLIC_KEY_FILE"),
        ({"JWT_SECRET_FILE": "/no/such/file"}, "JWT_SECRET_FILE"),
        ({"JWT_SECRET": SECRET, "INVENTORY_MAX_WORKERS": "many"}, "INVENTORY_MAX_WORKERS"),
        ({"JWT_SECRET": SECRET, "INVENTORY_SHUTDOWN_GRACE_S": "-1"}, "INVENTORY_SHUTDOWN_GRACE_S"),
    ],
)
def test_bad_settings_are_refused_naming_the_variable(env, named):
    with pytest.raises(SettingsError, match=named):
        InventorySettings.from_env(env)


def test_the_secret_can_come_from_a_file(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")

    assert AuthSettings.from_env({"JWT_SECRET_FILE": str(secret_file)}, "INVENTORY").secret == SECRET


def test_a_prefixed_secret_wins_over_a_plain_secret_file(tmp_path):
    plain_file = tmp_path / "plain"
    plain_file.write_text("p" * 32)

    settings = AuthSettings.from_env({"JWT_SECRET_FILE": str(plain_file), "INVENTORY_JWT_SECRET": SECRET}, "INVENTORY")

    assert settings.secret == SECRET


def test_the_crm_mints_towards_inventory_with_settings_of_their_own():
    settings = CrmSettings.from_env(
        {
            "CRM_JWT_SECRET": SECRET,
            "CRM_JWT_AUDIENCE": "crm",
            "CRM_INVENTORY_JWT_SECRET": "i" * 32,
            "CRM_INVENTORY_JWT_AUDIENCE": "inventory",
        }
    )

    assert (settings.auth.audience, settings.auth.secret) == ("crm", SECRET)
    assert (settings.inventory_auth.audience, settings.inventory_auth.secret) == ("inventory", "i" * 32)


@pytest.mark.parametrize(("raw", "pinned"), [(None, False), ("false", False), ("1", True), ("on", True)])
def test_pin_cpus_reads_true_or_false(raw, pinned):
    env = {"JWT_SECRET": SECRET} | ({"CRM_PIN_CPUS": raw} if raw is not None else {})

    assert CrmSettings.from_env(env).pin_cpus is pinned


def test_pin_cpus_refuses_anything_else():
    with pytest.raises(SettingsError, match="INVENTORY_PIN_CPUS"):
        InventorySettings.from_env({"JWT_SECRET": SECRET, "INVENTORY_PIN_CPUS": "sometimes"})


def test_pool_pre_ping_is_on_unless_turned_off():
    assert InventorySettings.from_env({"JWT_SECRET": SECRET}).db_pool_pre_ping
    assert not InventorySettings.from_env(
        {"JWT_SECRET": SECRET, "INVENTORY_DB_POOL_PRE_PING": "false"}
    ).db_pool_pre_ping
