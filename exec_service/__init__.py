"""The execution plane: gRPC servicer, engine, executors, actions, event bus, leases."""
