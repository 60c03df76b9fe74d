"""The HTTP plane: GraphQL (Strawberry), the REST routes of the service we replace, health."""
