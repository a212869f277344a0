"""The roles of inventory.v1.ItemService's contract: a token with READ_ROLE may call the
reads, one with WRITE_ROLE every method. The server enforces them; callers mint tokens with them."""

READ_ROLE = "inventory.read"
WRITE_ROLE = "inventory.write"
