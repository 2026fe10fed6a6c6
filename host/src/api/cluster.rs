//! `Cluster` on the host: the node table as drivers are sent it. Nodes come from the host's
//! object sources (Node objects), never from callers.

use netlet_sdk::proto::{
    ListNodesRequest, ListNodesResponse, ProgramNodesRequest, ProgramNodesResponse,
    cluster_server::Cluster,
};
use netlet_sdk::validate::reason_error;
use tonic::{Code, Request, Response, Status};

use super::Api;

#[tonic::async_trait]
impl Cluster for Api {
    async fn program_nodes(
        &self,
        _req: Request<ProgramNodesRequest>,
    ) -> Result<Response<ProgramNodesResponse>, Status> {
        Err(reason_error(
            Code::FailedPrecondition,
            "the host's node table comes from its sources (the Kubernetes API's Node objects, or Node manifests), not from callers",
            "NODES_FROM_SOURCES",
        ))
    }

    async fn list_nodes(
        &self,
        _req: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        Ok(Response::new(ListNodesResponse {
            nodes: self.0.nodes.list(),
            generation: self.0.nodes.generation(),
        }))
    }
}
