"""Reads and writes come from the contracts (NO_SIDE_EFFECTS in the .proto): every method
is classified, a write never gets the read role, the channel retries reads only."""

from __future__ import annotations

import json

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool

from crm.v1 import crm_pb2
from crm_client import CrmClient
from crm_svc.servicer import CUSTOMER_ROLE
from crm_svc.servicer import ROLE_FOR_METHOD as CRM_ROLE_FOR_METHOD
from inventory.v1 import inventory_pb2
from inventory_client import InventoryClient
from inventory_client.roles import READ_ROLE, ROLE_FOR_METHOD, WRITE_ROLE
from servicekit.contract import is_reading, method_roles, reading_methods, retried_methods

ITEM_SERVICE = inventory_pb2.DESCRIPTOR.services_by_name["ItemService"]
RESERVATION_SERVICE = inventory_pb2.DESCRIPTOR.services_by_name["ReservationService"]
CRM_SERVICE = crm_pb2.DESCRIPTOR.services_by_name["CustomerItemsService"]
NO_SIDE_EFFECTS = descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS


def declared_read(method) -> bool:
    return method.GetOptions().idempotency_level == NO_SIDE_EFFECTS


def scratch_service(methods: dict[str, int]):
    """A service of its own descriptor pool: method name -> idempotency level."""
    file = descriptor_pb2.FileDescriptorProto(name="scratch/v1/scratch.proto", package="scratch.v1", syntax="proto3")
    file.message_type.add(name="Empty")
    service = file.service.add(name="ScratchService")
    for name, level in methods.items():
        method = service.method.add(name=name, input_type=".scratch.v1.Empty", output_type=".scratch.v1.Empty")
        method.options.idempotency_level = level
    pool = descriptor_pool.DescriptorPool()
    return pool.FindFileByName(pool.Add(file).name).services_by_name["ScratchService"]


@pytest.mark.parametrize("service", [ITEM_SERVICE, CRM_SERVICE], ids=["inventory", "crm"])
def test_every_method_is_a_read_or_a_write_as_its_contract_says(service):
    for method in service.methods:
        assert is_reading(method) == declared_read(method), method.full_name
    assert set(reading_methods(service)) == {method.name for method in service.methods if declared_read(method)}


def test_every_inventory_method_has_a_role_and_no_write_has_the_read_role():
    methods = [method for service in (ITEM_SERVICE, RESERVATION_SERVICE) for method in service.methods]
    assert set(ROLE_FOR_METHOD) == {f"/{method.containing_service.full_name}/{method.name}" for method in methods}
    for method in methods:
        role = ROLE_FOR_METHOD[f"/{method.containing_service.full_name}/{method.name}"]
        assert role == (READ_ROLE if declared_read(method) else WRITE_ROLE), method.name


def test_a_method_its_contract_does_not_mark_is_a_write():
    service = scratch_service(
        {
            "Peek": NO_SIDE_EFFECTS,
            "Frobnicate": descriptor_pb2.MethodOptions.IDEMPOTENCY_UNKNOWN,
            "Put": descriptor_pb2.MethodOptions.IDEMPOTENT,
        }
    )

    roles = method_roles(service, read_role="read", write_role="write")

    assert roles == {
        "/scratch.v1.ScratchService/Peek": "read",
        "/scratch.v1.ScratchService/Frobnicate": "write",
        "/scratch.v1.ScratchService/Put": "write",
    }


def test_every_crm_method_needs_a_customer_token():
    assert {
        f"/crm.v1.CustomerItemsService/{method.name}": CUSTOMER_ROLE for method in CRM_SERVICE.methods
    } == CRM_ROLE_FOR_METHOD


def retried_by_channel(client_class) -> set[str]:
    options = dict(client_class.channel_options())
    config = json.loads(options["grpc.service_config"])
    (method_config,) = config["methodConfig"]
    return {entry["method"] for entry in method_config["name"]}


@pytest.mark.parametrize(
    ("client_class", "service"), [(InventoryClient, ITEM_SERVICE), (CrmClient, CRM_SERVICE)], ids=["inventory", "crm"]
)
def test_the_channel_retries_the_unary_reads_and_never_a_write(client_class, service):
    retried = retried_by_channel(client_class)

    assert retried, "the contract marks no unary read"
    assert retried == set(retried_methods(service))
    assert retried == {
        method.name for method in service.methods if declared_read(method) and not method.server_streaming
    }
