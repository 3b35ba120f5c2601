"""clstream-server: the gRPC service around one live cl_engine.Learner."""
