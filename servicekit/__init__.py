"""What both services share: domain errors and their gRPC statuses, settings, logging, auth."""
