"""The generated gRPC stubs of proto/rmgen/v1/rmgen.proto (written at build time)."""
