//! What other parties read, defined once: the REST API's resource shapes ([`views`]), the messages
//! other teams receive on Kafka and their JSON Schemas ([`published`]), and the names of the read
//! models the projector writes and query-api reads ([`read_models`]).

pub mod published;
pub mod read_models;
pub mod views;
