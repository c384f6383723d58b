//! Errors of the agent's operations and how the API reports them.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Ipam(#[from] crate::ipam::IpamError),
    #[error(transparent)]
    Datapath(#[from] ciliate_datapath::loader::LoadError),
    #[error(transparent)]
    Netlink(#[from] ciliate_datapath::netlink::NetlinkError),
    #[error(transparent)]
    Sysctl(#[from] ciliate_datapath::sysctl::SysctlError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("{context}")]
    Map {
        context: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("{0}")]
    Internal(String),
}

impl AgentError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) | Self::Ipam(crate::ipam::IpamError::OutOfRange { .. }) => {
                StatusCode::BAD_REQUEST
            }
            Self::NotFound(_) | Self::Ipam(crate::ipam::IpamError::NotAllocated { .. }) => {
                StatusCode::NOT_FOUND
            }
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Ipam(crate::ipam::IpamError::Exhausted { .. }) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The message with every cause in the chain, for API answers and logs.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(e) = source {
            text.push_str(": ");
            text.push_str(&e.to_string());
            source = e.source();
        }
        text
    }
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let body = ciliate_api::ApiError {
            error: self.chain(),
        };
        (self.status(), Json(body)).into_response()
    }
}

/// Whether a map operation failed only because the key is not there (a
/// remove of what is already gone, an entry the datapath deleted meanwhile).
pub fn is_not_found(e: &aya::maps::MapError) -> bool {
    match e {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}
