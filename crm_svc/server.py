"""Wiring of the CRM service: the inventory client, the service, the gRPC server.

The only module that knows every piece.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc.aio

from crm.v1 import crm_pb2, crm_pb2_grpc
from crm_svc.service import CustomerItemsService
from crm_svc.servicer import ROLE_FOR_METHOD, CustomerItemsServicer
from crm_svc.settings import CrmSettings
from inventory_client import READ_ROLE, AsyncInventoryClient
from servicekit.credentials import MintedServiceToken, TokenFile
from servicekit.jwt import TokenIssuer, TokenVerifier
from servicekit.main import run_service
from servicekit.observability import AsyncClientMetricsInterceptor, ServerMetrics, metrics_served
from servicekit.pipeline import Authorizer
from servicekit.server import RunningServer, finish_server, new_server, serve_until_signalled
from servicekit.tracing import Tracing, tracing_started

log = logging.getLogger(__name__)

CRM_SERVICE_NAME = crm_pb2.DESCRIPTOR.services_by_name["CustomerItemsService"].full_name


def service_token(settings: CrmSettings) -> Callable[[], str]:
    """The CRM's own credentials towards inventory: a platform-kept file, or self-minted."""
    if settings.inventory_token_file:
        return TokenFile(settings.inventory_token_file)
    return MintedServiceToken(
        TokenIssuer(settings.inventory_auth),
        settings.service_token_subject,
        [READ_ROLE],
        settings.service_token_lifetime_s,
    )


def connect_inventory(
    settings: CrmSettings,
    metrics: ServerMetrics | None = None,
    tracing: Tracing | None = None,
) -> AsyncInventoryClient:
    """Call on the event loop that will use it (a grpc.aio channel belongs to its loop)."""
    interceptors: list[grpc.aio.ClientInterceptor] = [AsyncClientMetricsInterceptor(metrics)] if metrics else []
    if tracing is not None:
        interceptors += tracing.aio_client_interceptors
    return AsyncInventoryClient.connect(
        settings.inventory_target,
        service_token(settings),
        timeout_s=settings.inventory_timeout_s,
        interceptors=interceptors,
        tls=settings.inventory_tls,
    )


async def build_server(
    settings: CrmSettings,
    items: CustomerItemsService,
    *,
    metrics: ServerMetrics | None = None,
    tracing: Tracing | None = None,
) -> RunningServer:
    """Call on the event loop that will serve."""
    authorizer = Authorizer(TokenVerifier(settings.auth), ROLE_FOR_METHOD)
    server = new_server(
        metrics or ServerMetrics(), authorizer, settings.server.limits, tracing, reuse_port=settings.server.reuse_port
    )
    crm_pb2_grpc.add_CustomerItemsServiceServicer_to_server(CustomerItemsServicer(items), server)
    return await finish_server(server, settings.server.listen_address, [CRM_SERVICE_NAME], tls=settings.server.tls)


async def serve(settings: CrmSettings) -> None:
    metrics = ServerMetrics()
    with (
        metrics_served(settings.server.metrics_address, metrics.registry),
        tracing_started(settings.server.traces_exporter, "crm") as tracing,
    ):
        async with connect_inventory(settings, metrics, tracing) as inventory:
            running = await build_server(settings, CustomerItemsService(inventory), metrics=metrics, tracing=tracing)
            security = "TLS" if settings.inventory_tls.enabled else "plaintext"
            log.info("crm calls inventory at %s (%s)", settings.inventory_target, security)
            await serve_until_signalled(running, "crm", settings.server)


def main() -> None:
    run_service(
        "crm_svc.server",
        "CRM",
        CrmSettings.from_env,
        serve,
        summary=f"Serves {CRM_SERVICE_NAME} (a customer's items, read from inventory) over gRPC, "
        "with health and reflection.",
    )


if __name__ == "__main__":
    main()
