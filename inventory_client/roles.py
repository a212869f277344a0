"""The roles of inventory.v1's contract (ItemService and ReservationService): the reads (the methods the .proto marks
NO_SIDE_EFFECTS) need READ_ROLE, every other method WRITE_ROLE; neither implies the other,
so a token that reads and writes carries both. The server enforces them; callers mint
tokens with them."""

from inventory.v1 import inventory_pb2 as pb
from servicekit.contract import method_roles

READ_ROLE = "inventory.read"
WRITE_ROLE = "inventory.write"

# The role each RPC of ItemService and ReservationService needs, by wire name; the auth
# interceptor denies any method missing here.
ROLE_FOR_METHOD = {
    method: role
    for service in ("ItemService", "ReservationService")
    for method, role in method_roles(
        pb.DESCRIPTOR.services_by_name[service], read_role=READ_ROLE, write_role=WRITE_ROLE
    ).items()
}
