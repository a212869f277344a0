"""Settings come from an environment mapping; weak or missing secrets are refused."""

from __future__ import annotations

import pytest

from crm_svc.settings import CrmSettings
from inventory_svc.settings import InventorySettings
from servicekit.jwt import AuthSettings
from servicekit.pipeline import CallLimits
from servicekit.server_settings import ServerLimits, ServerSettings
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

    assert (settings.database_url, settings.server.listen_address) == ("sqlite:///var/inventory.db", "127.0.0.1:50051")


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
        (
            {"JWT_SECRET": SECRET, "INVENTORY_RESERVATION_SWEEP_INTERVAL_S": "soon"},
            "INVENTORY_RESERVATION_SWEEP_INTERVAL_S",
        ),
        (
            {"JWT_SECRET": SECRET, "INVENTORY_RESERVATION_SWEEP_INTERVAL_S": "-1"},
            "INVENTORY_RESERVATION_SWEEP_INTERVAL_S",
        ),
        # An interval of zero would run its task back to back.
        (
            {"JWT_SECRET": SECRET, "INVENTORY_RESERVATION_SWEEP_INTERVAL_S": "0"},
            "INVENTORY_RESERVATION_SWEEP_INTERVAL_S must be greater than zero",
        ),
        (
            {"JWT_SECRET": SECRET, "INVENTORY_REQUEST_ID_PURGE_INTERVAL_S": "0"},
            "INVENTORY_REQUEST_ID_PURGE_INTERVAL_S must be greater than zero",
        ),
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

    assert CrmSettings.from_env(env).server.pin_cpus is pinned


def test_pin_cpus_refuses_anything_else():
    with pytest.raises(SettingsError, match="INVENTORY_PIN_CPUS"):
        InventorySettings.from_env({"JWT_SECRET": SECRET, "INVENTORY_PIN_CPUS": "sometimes"})


def test_pool_pre_ping_is_on_unless_turned_off():
    assert InventorySettings.from_env({"JWT_SECRET": SECRET}).db_pool_pre_ping
    assert not InventorySettings.from_env(
        {"JWT_SECRET": SECRET, "INVENTORY_DB_POOL_PRE_PING": "false"}
    ).db_pool_pre_ping


def test_reservations_are_swept_every_second_unless_configured():
    assert InventorySettings.from_env({"JWT_SECRET": SECRET}).reservation_sweep_interval_s == 1.0
    assert (
        InventorySettings.from_env(
            {"JWT_SECRET": SECRET, "INVENTORY_RESERVATION_SWEEP_INTERVAL_S": "0.25"}
        ).reservation_sweep_interval_s
        == 0.25
    )


SERVER_DEFAULTS_OF_EACH_SERVICE = {
    "inventory": ("127.0.0.1:50051", "127.0.0.1:9051"),
    "crm": ("127.0.0.1:50052", "127.0.0.1:9052"),
}


def read_service_settings(service: str, env: dict[str, str]):
    read = InventorySettings.from_env if service == "inventory" else CrmSettings.from_env
    return read({"JWT_SECRET": SECRET, **env})


@pytest.mark.parametrize("service", ["inventory", "crm"])
def test_each_service_has_its_own_ports_and_the_same_server_defaults(service):
    server = read_service_settings(service, {}).server

    assert (server.listen_address, server.metrics_address) == SERVER_DEFAULTS_OF_EACH_SERVICE[service]
    assert (server.processes, server.pin_cpus, server.reuse_port, server.shutdown_drain_s, server.shutdown_grace_s) == (
        1,
        False,
        False,
        0.0,
        10.0,
    )
    assert (server.log_level, server.traces_exporter) == ("INFO", "none")
    assert server.limits == ServerLimits()
    assert server == (InventorySettings() if service == "inventory" else CrmSettings()).server


@pytest.mark.parametrize("service", ["inventory", "crm"])
@pytest.mark.parametrize("prefixed", [True, False], ids=["prefixed", "plain"])
def test_every_server_setting_is_read_under_its_name(service, prefixed):
    values = {
        "LISTEN_ADDRESS": "0.0.0.0:7000",
        "METRICS_ADDRESS": "off",
        "PROCESSES": "3",
        "PIN_CPUS": "true",
        "REUSE_PORT": "true",
        "SHUTDOWN_DRAIN_S": "2.5",
        "SHUTDOWN_GRACE_S": "4",
        "LOG_LEVEL": "DEBUG",
        "OTEL_TRACES_EXPORTER": "console",
        "MAX_STREAMS_PER_CONNECTION": "7",
        "MAX_CONNECTION_AGE_S": "8",
        "MAX_CONNECTION_AGE_GRACE_S": "9",
        "MIN_CLIENT_PING_INTERVAL_S": "11",
        "KEEPALIVE_S": "12",
        "KEEPALIVE_TIMEOUT_S": "13",
        "MAX_CALLS_IN_FLIGHT": "14",
        "MAX_CALLS_PER_SUBJECT": "15",
        "CALLS_PER_SUBJECT_OVERRIDE": "crm=16",
    }
    prefix = f"{service.upper()}_" if prefixed else ""

    server = read_service_settings(service, {prefix + name: value for name, value in values.items()}).server

    assert server == ServerSettings(
        listen_address="0.0.0.0:7000",
        metrics_address="off",
        processes=3,
        pin_cpus=True,
        reuse_port=True,
        shutdown_drain_s=2.5,
        shutdown_grace_s=4.0,
        log_level="DEBUG",
        traces_exporter="console",
        limits=ServerLimits(
            max_streams_per_connection=7,
            max_connection_age_s=8.0,
            max_connection_age_grace_s=9.0,
            min_client_ping_interval_s=11.0,
            keepalive_s=12.0,
            keepalive_timeout_s=13.0,
            calls=CallLimits(max_calls_in_flight=14, max_calls_per_subject=15, calls_per_subject_override={"crm": 16}),
        ),
    )
