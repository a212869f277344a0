"""The servers one run starts and waits for: two null servers (the ceiling), the pair that
differs only by the auth interceptor, inventory and the CRM (services.py runs each)."""

from __future__ import annotations

import sys
from pathlib import Path

from bench_support import data
from bench_support.common import ROOT
from bench_support.services import BIN, Process, Services, free_port, wait_answering, wait_serving
from bench_support.workloads import AUTH_OFF, AUTH_ON, ITEM_SERVICE
from inventory.v1 import inventory_pb2 as pb


def start_servers(database: data.Database, env: dict[str, str], log_dir: Path) -> tuple[Services, dict[str, Process]]:
    services = Services()
    processes: dict[str, Process] = {}
    try:
        for name, mode in (("null server (threads)", "16"), ("null server (grpc.aio)", "aio")):
            address = f"127.0.0.1:{free_port()}"
            command = [sys.executable, str(ROOT / "scripts/bench_support/null_server.py"), address, mode]
            processes[name] = services.start(
                name.replace(" ", "-").replace("(", "").replace(")", ""), command, env, address, log_dir
            )
        for name, auth in ((AUTH_ON, "on"), (AUTH_OFF, "off")):
            address, metrics_address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
            command = [
                sys.executable,
                str(ROOT / "scripts/bench_support/auth_cost_server.py"),
                address,
                auth,
                metrics_address,
            ]
            processes[name] = services.start(
                f"inventory-auth-{auth}",
                command,
                {**env, "INVENTORY_DATABASE_URL": database.url},
                address,
                log_dir,
                metrics_address,
            )
        inventory_address, crm_address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        inventory_metrics, crm_metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        processes["inventory"] = services.start(
            "inventory",
            [str(BIN / "inventory-server")],
            {
                **env,
                "INVENTORY_DATABASE_URL": database.url,
                "INVENTORY_LISTEN_ADDRESS": inventory_address,
                "INVENTORY_METRICS_ADDRESS": inventory_metrics,
            },
            inventory_address,
            log_dir,
            inventory_metrics,
        )
        processes["crm"] = services.start(
            "crm",
            [str(BIN / "crm-server")],
            {
                **env,
                "CRM_LISTEN_ADDRESS": crm_address,
                "CRM_INVENTORY_TARGET": inventory_address,
                "CRM_METRICS_ADDRESS": crm_metrics,
            },
            crm_address,
            log_dir,
            crm_metrics,
        )
        null_request = pb.GetItemRequest(id=1).SerializeToString()
        for name in ("null server (threads)", "null server (grpc.aio)"):
            wait_answering(processes[name], ITEM_SERVICE + "GetItem", null_request)
        for name in ("inventory", "crm", AUTH_ON, AUTH_OFF):
            wait_serving(processes[name])
    except BaseException:
        services.stop()
        raise
    return services, processes
