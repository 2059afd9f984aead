//! The generated gRPC types and services of `proto/mesofs.proto`.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("mesofs.v1");
